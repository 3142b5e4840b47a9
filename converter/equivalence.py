"""How exactly a spiking UNet computes its quantised twin, measured neuron by neuron.

For a batch of UNet inputs, `compare_simulations` runs the step simulation and the closed form
(converter/spiking/simulation.py) and, site by site, compares each neuron's time-averaged output:
- free running: step output vs the closed form's output for the same input. A neuron "differs"
  when the two are at least half a level apart (a count differs); it is a "tie" when the closed
  form's quantiser argument T * g / theta + f lies within TIE_TOLERANCE of the integer where the
  count changes, i.e. float rounding of the site's input (the convolutions see the time average
  in one pass and the T steps separately) decides it. Differences elsewhere are downstream of
  ties (a flipped count moves the next layers' currents by a whole level).
- pinned: step output vs the twin applied to the step run's own time-averaged input (the very
  running mean its neurons saw): 0 for exact neurons by construction; for the single-spike neuron
  this is its lag, and "both signs" counts neurons whose spikes took both signs.
- site MSE against the ANN's activation on the same averaged input, for the SNN and for the twin.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from .spiking.layers import SpikingActivation
from .spiking.model import SpikingUNet2DModel

TIE_TOLERANCE = 1e-3  # in levels: a differing count is a tie if its quantiser argument is this close to a step
PROBE_CALLS = 4  # sampler calls of the first batch whose inputs the probe replays
PROBE_INPUTS = 4  # inputs per probed call (one pass of T * 4 rows)


@dataclass
class Tally:
    """Neuron counts (each neuron of each input once) and squared errors summed over sites."""

    neurons: int = 0
    # neurons whose count differs from the twin's: free-running, of those at a float tie, pinned
    differ: int = 0
    differ_ties: int = 0
    pinned_differ: int = 0
    both_signs: int = 0  # neurons whose ON and OFF sides both fired
    # squared error against the float activation of the same time-averaged input, summed over sites
    snn_sq_error: float = 0.0
    twin_sq_error: float = 0.0

    def add(self, other: "Tally") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def summary(self) -> dict[str, float | int]:
        neurons = max(self.neurons, 1)
        return {
            "neurons": self.neurons,
            "count_differs_fraction": self.differ / neurons,
            "count_differs_ties_fraction": self.differ_ties / neurons,
            "count_differs_not_ties_fraction": (self.differ - self.differ_ties) / neurons,
            "pinned_count_differs_fraction": self.pinned_differ / neurons,
            "both_signs_fraction": self.both_signs / neurons,
            "site_mse_snn_over_twin": self.snn_sq_error / self.twin_sq_error if self.twin_sq_error > 0 else None,
        }


def _half_level(site: SpikingActivation, like: torch.Tensor) -> torch.Tensor:
    theta_pos, theta_neg = site.neuron.thresholds(like)
    return 0.5 * torch.minimum(theta_pos, theta_neg) / site.timesteps


def _near_step(site: SpikingActivation, mean_current: torch.Tensor) -> torch.Tensor:
    """Neurons whose quantiser argument u = D / theta + f is within TIE_TOLERANCE of an integer
    k in [1, T] (where the count steps), on either side."""
    cumulative = site.drive(mean_current) * float(site.timesteps)
    return site.neuron.step_distance(cumulative, site.timesteps) < TIE_TOLERANCE


@contextmanager
def _hooks(snn: SpikingUNet2DModel, hook) -> Iterator[None]:
    handles = [site.register_forward_hook(hook) for site in snn.sites().values()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def compare_simulations(snn: SpikingUNet2DModel, x: torch.Tensor, t: torch.Tensor) -> dict:
    """Steps vs closed form on one batch of UNet inputs (one pass each): tallies and eps."""
    previous_mode, previous_pass = snn.simulation, snn.inputs_per_pass
    steps_out: dict[str, torch.Tensor] = {}
    total = Tally()

    def on_steps(site: SpikingActivation, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        steps = site.timesteps
        mean = site.mean_input(inputs[0])
        per_step = output.unflatten(0, (steps, -1))
        average = per_step.mean(dim=0)
        twin = site.twin(mean)
        half = _half_level(site, mean)
        emitted = per_step  # sites emit spikes only; their bias correction is folded into the next layer
        target = site.activation(site.norm(mean))
        shift = site.shift_like(mean)
        total.add(Tally(
            neurons=average.numel(),
            pinned_differ=int(((average - twin).abs() > half).sum()),
            both_signs=int(((emitted > half).any(dim=0) & (emitted < -half).any(dim=0)).sum()),
            snn_sq_error=float((average + shift - target).double().pow(2).sum()),
            twin_sq_error=float((twin + shift - target).double().pow(2).sum()),
        ))
        steps_out[site.site] = average

    def on_closed(site: SpikingActivation, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        differ = (steps_out[site.site] - output).abs() > _half_level(site, output)
        total.add(Tally(differ=int(differ.sum()), differ_ties=int((differ & _near_step(site, inputs[0])).sum())))

    try:
        snn.set_inputs_per_pass(x.shape[0])
        snn.set_simulation("steps")
        with _hooks(snn, on_steps):
            start = time.perf_counter()
            eps_steps = snn(x, t).sample
            step_seconds = time.perf_counter() - start
        snn.set_simulation("closed-form")
        with _hooks(snn, on_closed):
            start = time.perf_counter()
            eps_closed = snn(x, t).sample
            closed_seconds = time.perf_counter() - start
    finally:
        snn.set_simulation(previous_mode)
        snn.set_inputs_per_pass(previous_pass)
    relative = (eps_closed - eps_steps).flatten(1).norm(dim=1) / eps_steps.flatten(1).norm(dim=1).clamp_min(1e-12)
    return {"tally": total, "eps_relative_difference": relative, "eps_steps": eps_steps, "eps_closed_form": eps_closed,
            "seconds": {"steps": step_seconds, "closed_form": closed_seconds}}


def equivalence_section(snn: SpikingUNet2DModel, inputs: list[tuple[torch.Tensor, torch.Tensor]],
                        time_ratio: float | None) -> dict:
    """The report's `equivalence` section over probe batches (x_t, t) the step sampler visited."""
    total, largest = Tally(), 0.0
    for x, t in inputs:
        result = compare_simulations(snn, x, t)
        total.add(result["tally"])
        largest = max(largest, float(result["eps_relative_difference"].max()))
    return {
        "probe_inputs": sum(len(x) for x, _ in inputs),
        "probe_timesteps": sorted({int(v) for _, t in inputs for v in t.reshape(-1).tolist()}),
        "tie_tolerance_levels": TIE_TOLERANCE,
        **total.summary(),
        "largest_eps_relative_difference": largest,
        "closed_form_over_steps_time": time_ratio,
    }


def probe_calls(steps: int) -> set[int]:
    """PROBE_CALLS sampler calls spread over a trajectory of `steps` (the first batch's)."""
    return {round(k * (steps - 1) / max(PROBE_CALLS - 1, 1)) for k in range(PROBE_CALLS)}


class ProbeRecorder:
    """Wraps a sampler's eps function and keeps the inputs of chosen calls (for the probe)."""

    def __init__(self, eps_function, calls: set[int]) -> None:
        self.eps_function, self.calls, self.count = eps_function, calls, 0
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.count in self.calls:
            x_probe = x[:PROBE_INPUTS].clone()
            self.inputs.append((x_probe, torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])[:PROBE_INPUTS].clone()))
        self.count += 1
        return self.eps_function(x, t)


def record_inputs_at(record_inputs: torch.Tensor, record_timesteps: torch.Tensor, timestep: int,
                     count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` recorded x_t whose diffusion timestep is `timestep` (refused if none)."""
    chosen = (record_timesteps == timestep).nonzero().flatten()[:count]
    if len(chosen) == 0:
        available = sorted({int(v) for v in record_timesteps.tolist()})
        raise ValueError(f"the calibration record holds no inputs at t = {timestep} (it has {available})")
    return record_inputs[chosen], record_timesteps[chosen]


def neuron_table(models: dict[str, SpikingUNet2DModel], probes: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict]:
    """One row per model: the equivalence tally over `probes` (pinned and free-running), plus the
    spikes per neuron and UNet call that the step simulation emitted."""
    rows = []
    for label, snn in models.items():
        total = Tally()
        snn.set_monitor(True)
        try:
            for x, t in probes:
                total.add(compare_simulations(snn, x, t)["tally"])
            spikes = sum(n.spike_count for n in snn.neurons().values())
        finally:
            snn.set_monitor(False)
        rows.append({"model": label, "timesteps": snn.timesteps, "neuron": snn.policy.neuron,
                     "max_payload": snn.policy.max_payload,
                     "emission": snn.policy.emission, "spikes_per_neuron": spikes / max(total.neurons, 1),
                     **total.summary()})
    return rows

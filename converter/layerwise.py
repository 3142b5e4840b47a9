"""Layer-by-layer threshold matching: each site is fitted to the ANN on the SNN's own inputs.

Statistics-based thresholds assume every site sees the ANN's activations. In the SNN, site l
sees what the already-spiking sites 1..l-1 produced, errors included. One SNN forward pass over
calibration inputs fixes this progressively, in execution order: when site l is reached, its
actual input currents are known, so its thresholds are chosen to make its output match the
ANN's activation at l (MSE over the calibration inputs), then the remaining mean error per
channel becomes the site's bias-correction current, and only then does the signal move on to
site l+1, which is therefore fitted to the corrected output.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from tqdm.auto import tqdm

from ..calibration.record import CalibrationRecord
from ..calibration.settings import CalibrationError
from ..calibration.sites import activation_function, activation_sites
from ..calibration.thresholds import MIN_THRESHOLD, mse_search, neuron_quantise
from .spiking.layers import SpikingActivation
from .spiking.model import SpikingUNet2DModel

MAX_VALUES_PER_CHANNEL = 4096


def matching_inputs(record: CalibrationRecord, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` calibration inputs spread evenly over the recorded x_t (and so over timesteps)."""
    if record.inputs is None:
        raise CalibrationError("calibration record holds no inputs for layer-wise matching (re-run calibration)")
    index = torch.linspace(0, len(record.inputs) - 1, min(count, len(record.inputs))).round().long()
    return record.inputs[index], record.input_timesteps[index]


@torch.no_grad()
def ann_site_outputs(ann: UNet2DModel, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """act(GroupNorm(h)) at every site of the ANN for inputs (x, t)."""
    outputs: dict[str, torch.Tensor] = {}
    sites = activation_sites(ann)
    handles = [
        site.norm.register_forward_hook(
            lambda m, i, z, name=name, act=site.activation: outputs.__setitem__(name, activation_function(act)(z))
        )
        for name, site in sites.items()
    ]
    try:
        ann(x, t)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """[B, C, ...] -> [C, N]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _fit_site(site: SpikingActivation, currents: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> None:
    """Choose the site's thresholds for its actual (time-averaged) input and the ANN's target."""
    steps, neuron = site.timesteps, site.neuron
    mean_input = currents.unflatten(0, (steps, -1)).mean(dim=0)
    z = site.norm(mean_input)
    drive = site.activation(z) if neuron.signed else z
    values, wanted = _channels_first(drive), _channels_first(target)
    if values.shape[1] > MAX_VALUES_PER_CHANNEL:  # the same random columns from both
        keep = torch.randperm(values.shape[1], generator=generator)[:MAX_VALUES_PER_CHANNEL].to(values.device)
        values, wanted = values[:, keep], wanted[:, keep]
    init = neuron.membrane_init
    pos_part, neg_part = values.clamp_min(0), (-values).clamp_min(0)
    theta_neg = neuron.threshold_neg[:, None, None]

    def emit_with_pos(theta: torch.Tensor) -> torch.Tensor:
        out = neuron_quantise(pos_part[:, None, :], theta, steps, init, neuron.signed)
        if neuron.signed:
            out = out - neuron_quantise(neg_part[:, None, :], theta_neg, steps, init, True)
        return out

    theta_pos = mse_search(emit_with_pos, wanted, pos_part.max(dim=1).values)
    neuron.threshold_pos.copy_(theta_pos.clamp_min(MIN_THRESHOLD))
    if neuron.signed:
        positive = neuron_quantise(pos_part, neuron.threshold_pos[:, None], steps, init, True)

        def emit_with_neg(theta: torch.Tensor) -> torch.Tensor:
            return positive[:, None, :] - neuron_quantise(neg_part[:, None, :], theta, steps, init, True)

        neuron.threshold_neg.copy_(mse_search(emit_with_neg, wanted, neg_part.max(dim=1).values).clamp_min(MIN_THRESHOLD))


@torch.no_grad()
def match_layerwise(
    snn: SpikingUNet2DModel,
    ann: UNet2DModel,
    record: CalibrationRecord,
    num_inputs: int = 16,
    bias_correction: bool = True,
    seed: int = 0,
) -> None:
    """Refit every site's thresholds and bias current in execution order (see module docstring)."""
    x, t = matching_inputs(record, num_inputs)
    device = next(snn.parameters()).device
    x, t = x.to(device), t.to(device)
    targets = ann_site_outputs(ann, x, t)
    steps = snn.timesteps
    generator = torch.Generator().manual_seed(seed)
    sites = snn.sites()
    progress = tqdm(total=len(sites), desc="layer-wise matching", unit="site")

    def before(site: SpikingActivation, inputs: tuple[torch.Tensor, ...]) -> None:
        if site.site in targets:  # the input encoder has no ANN counterpart: it keeps its thresholds
            _fit_site(site, inputs[0], targets[site.site], generator)
            site.output_shift.zero_()

    def after(site: SpikingActivation, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        progress.update()
        if site.site not in targets:
            return output
        if bias_correction:
            achieved = output.unflatten(0, (steps, -1)).mean(dim=0)
            site.output_shift.copy_((targets[site.site] - achieved).mean(dim=(0, 2, 3)))
        return output  # the consuming layer adds the (new) bias correction itself

    handles = []
    for site in sites.values():
        handles.append(site.register_forward_pre_hook(before))
        handles.append(site.register_forward_hook(after))
    chosen = snn.inputs_per_pass
    snn.set_inputs_per_pass(len(x))  # one pass: the hooks fit each site on all inputs at once
    try:
        snn(x, t)
    finally:
        snn.set_inputs_per_pass(chosen)
        for handle in handles:
            handle.remove()
        progress.close()

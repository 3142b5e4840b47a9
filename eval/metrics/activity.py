"""What a converted model's spikes make its layers do, counted while it samples.

The hooks sit on the receivers: every spike-driven Conv2d/Linear, and the product sites of
`full` attention. For each they count, per image and UNet evaluation:
- spike units times targets (`layer_acs`): today's convention, every unit one accumulate;
- synaptic events times targets (`layer_events`) and their cost (`layer_event_pj`): a spike of
  one unit is one accumulate per target, a graded spike of k units one multiply of its payload
  bits by the weight plus the accumulate (eval/metrics/costs.event_pj);
- the MACs a zero-skipping quantised ANN spends on the same layer (`layer_nonzero_macs`): one
  per target of every non-zero twin activation (a neuron's count over the T steps);
- spike units per SNN step and a histogram of payloads, for the report's
  `last_step_unit_fraction` and `max_payload`.
Under delta coding the units are those the site sent (converter/spiking/delta.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...converter.spiking.layers import SpikingActivation
from ...converter.spiking.model import SpikingUNet2DModel
from ...converter.spiking.operations import SPIKE_DRIVEN, classify_layers
from ...converter.spiking.residual import SpikeDrivenAttention, feeding_site
from .costs import event_pj, fan_out

LAYER_COUNTERS = ("layer_acs", "layer_events", "layer_event_pj", "layer_nonzero_macs", "layer_images")


def _counter() -> defaultdict:
    return defaultdict(float)


@dataclass
class Activity:
    """What ran during a measurement, summed over every UNet evaluation."""

    layer_acs: dict[str, float] = field(default_factory=_counter)
    layer_events: dict[str, float] = field(default_factory=_counter)
    layer_event_pj: dict[str, float] = field(default_factory=_counter)
    layer_nonzero_macs: dict[str, float] = field(default_factory=_counter)
    layer_images: dict[str, float] = field(default_factory=_counter)
    attention: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(_counter))
    step_units: dict[int, float] = field(default_factory=_counter)  # SNN step (0-based) -> spike units sent
    payloads: dict[int, float] = field(default_factory=_counter)  # units of one event -> how many events

    @classmethod
    def of(cls, snn: SpikingUNet2DModel) -> "Activity":
        """An empty activity with a counter for everything `snn` can do, in a fixed order: the
        keys must not depend on what a process ran, or the ranks of a sharded run would sum
        different tables (a rank with no batch hung the others in their collective)."""
        activity = cls()
        for path, (kind, _) in classify_layers(snn).items():
            if kind == SPIKE_DRIVEN:
                for counter in LAYER_COUNTERS:
                    getattr(activity, counter)[path] = 0.0
        for path, module in snn.unet.named_modules():
            if isinstance(module, SpikeDrivenAttention) and module.level == "full":
                activity.attention[path].update(dict.fromkeys(("acs", "macs", "images"), 0.0))
        activity.step_units.update(dict.fromkeys(range(snn.timesteps), 0.0))
        activity.payloads.update(dict.fromkeys(range(1, payload_cap(snn) + 1), 0.0))
        return activity

    def per_image(self, counter: str = "layer_acs") -> dict[str, float]:
        """One layer counter per image and UNet evaluation."""
        values = getattr(self, counter)
        return {path: value / max(self.layer_images[path], 1.0) for path, value in values.items()}

    def summed(self, sum_counts) -> "Activity":
        """This activity summed over the processes of a sharded run (`sum_counts`: eval/runs/distributed.py)."""
        total = Activity()
        paths = sorted(self.layer_images)
        for path, values in sum_counts({p: [getattr(self, c)[p] for c in LAYER_COUNTERS] for p in paths}).items():
            for counter, value in zip(LAYER_COUNTERS, values):
                getattr(total, counter)[path] = value
        keys = ("acs", "macs", "images")
        for path, values in sum_counts({p: [self.attention[p][k] for k in keys] for p in sorted(self.attention)}).items():
            total.attention[path].update(zip(keys, values))
        for name in ("step_units", "payloads"):
            own = getattr(self, name)
            for key, (value,) in sum_counts({str(k): [own[k]] for k in sorted(own)}).items():
                getattr(total, name)[int(key)] = value
        return total

    @property
    def max_payload(self) -> int | None:
        """The most units one event carried (None: nothing was sent)."""
        sent = [k for k, n in self.payloads.items() if n > 0]
        return max(sent) if sent else None

    @property
    def last_step_unit_fraction(self) -> float | None:
        """The share of spike units sent at the last SNN step."""
        total = sum(self.step_units.values())
        return self.step_units[max(self.step_units)] / total if total > 0 else None


def payload_cap(snn: SpikingUNet2DModel) -> int:
    """The largest payload the histogram tells apart: an event moves each side of a neuron by at
    most T units, so 2T (a neuron whose both sides change at one step) bounds every event."""
    return 2 * snn.timesteps


def spike_units(site: SpikingActivation, spikes: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Spike units per element of a site's output: 1 per single spike; an exact neuron's graded
    spike of payload k counts k. Read from the value: k = |x| / theta of its sign (a step in which
    both sides of an ON/OFF neuron change is counted by its net value)."""
    x = spikes.movedim(channel_dim, 1)
    theta_pos, theta_neg = site.neuron.thresholds(x)
    units = torch.where(x > 0, x / theta_pos, -x / theta_neg).round_()
    return units.movedim(1, channel_dim)


def sent_units(site: SpikingActivation, spikes: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Spike units per element that `site` sent to make `spikes` (its output, as a layer receives
    it). An exact neuron records them per side while monitored (under delta coding: the units of
    the changes it sent, converter/spiking/delta.py); a single-spike neuron's are its spikes."""
    recorded = getattr(site.neuron, "sent_units", None)
    if recorded is None:
        return spike_units(site, spikes, channel_dim)
    events = recorded.flatten(0, 1).to(spikes.dtype)
    if channel_dim != 1:
        return events.movedim(1, -1).reshape(spikes.shape)
    return _as_received(events, spikes.shape, site.site)


def _as_received(events: torch.Tensor, shape: torch.Size, site: str) -> torch.Tensor:
    """A site's events as its layer receives them: Upsample2D repeats every spike to 2x2
    positions (nearest), Downsample2D pads the right and bottom with silence."""
    if events.shape[:2] == shape[:2] and events.shape[2:] != shape[2:]:
        (h, w), (height, width) = events.shape[2:], shape[2:]
        if height % h == 0 and width % w == 0 and height // h == width // w > 1:
            events = F.interpolate(events, scale_factor=height // h, mode="nearest")
        elif 0 <= height - h <= 1 and 0 <= width - w <= 1:
            events = F.pad(events, (0, width - w, 0, height - h))
    if events.shape != shape:
        raise ValueError(f"site {site} sent {tuple(events.shape)} but its layer received {tuple(shape)}")
    return events


class ActivityMonitor:
    """Hooks that count what a converted model's spikes make its layers do, while active.

    Each spike-driven Conv2d: per input position, its counts over time, batch and channels times
    the fan-out map, times the output channels a spike reaches (out / groups). Each spike-driven
    Linear: the counts times out_features. `full` attention: the spike units of its q, k, v (and
    P) sites, each times the stored sums it selects; with analog P, the entries of S_{t-1} already
    reached, which (P_t - P_{t-1}) S_{t-1} multiplies; none under `spread` emission, whose
    layer-pipelined network computes P once from the completed q and k windows and schedules v's
    window after them, so every v spike selects a column of the final P (latency one more window).
    """

    def __init__(self, snn: SpikingUNet2DModel, activity: Activity | None = None) -> None:
        self.snn = snn
        self.activity = Activity.of(snn) if activity is None else activity
        self._fan_outs: dict[tuple[str, int, int], torch.Tensor] = {}
        self._handles: list = []
        self._monitoring: dict[str, bool] = {}

    def __enter__(self) -> Activity:
        self._monitoring = {name: neuron.monitor for name, neuron in self.snn.neurons().items()}
        for neuron in self.snn.neurons().values():
            neuron.monitor = True  # exact neurons then record the units they send (sent_units)
        kinds = classify_layers(self.snn)
        modules = dict(self.snn.unet.named_modules())
        for path, (kind, _) in kinds.items():
            if kind == SPIKE_DRIVEN:
                self._handles.append(modules[path].register_forward_pre_hook(self._layer_hook(path)))
        for path, module in modules.items():
            if isinstance(module, SpikeDrivenAttention) and module.level == "full":
                sites = module.product_sites
                head_channels = module.attention.inner_dim // module.attention.heads
                for name in [n for n in ("q", "k", "p", "v") if n in sites]:
                    self._handles.append(sites[name].register_forward_hook(
                        self._product_hook(path, name, head_channels, spiking_p="p" in sites)))
        return self.activity

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name, neuron in self.snn.neurons().items():
            neuron.monitor = self._monitoring[name]
            neuron.sent_units = None

    def _record_steps(self, units: torch.Tensor) -> None:
        """Units per SNN step and the payload histogram, from [T*B, ...] units."""
        per_step = units.unflatten(0, (self.snn.timesteps, -1)).flatten(1).sum(dim=1, dtype=torch.float64)
        for step, value in enumerate(per_step.tolist()):
            self.activity.step_units[step] += value
        values, counts = torch.unique(units[units > 0].clamp(max=payload_cap(self.snn)), return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            self.activity.payloads[int(value)] += count

    def _layer_hook(self, path: str):
        steps = self.snn.timesteps

        def hook(module: nn.Module, inputs) -> None:
            x = inputs[0].detach()
            units = sent_units(feeding_site(module), x, channel_dim=1 if isinstance(module, nn.Conv2d) else -1)
            nonzero = (x.unflatten(0, (steps, -1)).sum(dim=0) != 0).to(torch.float64)  # the twin's activations
            counters = {"layer_acs": units.to(torch.float64), "layer_events": (units > 0).to(torch.float64),
                        "layer_event_pj": event_pj(units.to(torch.float64))}
            if isinstance(module, nn.Conv2d):
                key = (path, x.shape[-2], x.shape[-1])
                if key not in self._fan_outs:
                    self._fan_outs[key] = fan_out(module, x.shape[-2], x.shape[-1]).to(x.device)
                targets = self._fan_outs[key] * (module.out_channels // module.groups)
                totals = {name: float((value.sum(dim=(0, 1)) * targets).sum()) for name, value in counters.items()}
                totals["layer_nonzero_macs"] = float((nonzero.sum(dim=(0, 1)) * targets).sum())
            else:
                totals = {name: float(value.sum()) * module.out_features for name, value in counters.items()}
                totals["layer_nonzero_macs"] = float(nonzero.sum()) * module.out_features
            for name, value in totals.items():
                getattr(self.activity, name)[path] += value
            self.activity.layer_images[path] += x.shape[0] / steps
            self._record_steps(units)
        return hook

    def _product_hook(self, path: str, name: str, head_channels: int, spiking_p: bool):
        steps = self.snn.timesteps
        pipelined = self.snn.policy.pipelined

        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            spikes = spike_units(module, output.detach()).unflatten(0, (steps, -1))  # [T, B, C, N] or [T, B, heads, N, N]
            tokens = spikes.shape[-1]
            record = self.activity.attention[path]
            per_step = spikes.flatten(1).sum(dim=1, dtype=torch.float64)
            if name == "q":  # each q spike adds a row of B_t (all keys)
                record["acs"] += float(per_step.sum()) * tokens
            elif name == "k":  # each k spike adds a column of A_{t-1} (t >= 2) and b_q . k to the key bias
                record["acs"] += float(per_step[1:].sum()) * tokens + float(per_step.sum())
            elif name == "p":  # each P spike adds a row of S_{t-1} (t >= 2) and itself to its row's sum (b_v)
                record["acs"] += float(per_step[1:].sum()) * head_channels + float(per_step.sum())
            elif spiking_p:  # each v spike adds a column of R_t (all queries) and itself to its key sum (b_p)
                record["acs"] += float(per_step.sum()) * (tokens + 1)
                record["images"] += spikes.shape[1]
            else:  # each v spike adds a column of P_t; (P_t - P_{t-1}) S_{t-1} multiplies what S holds
                record["acs"] += float(per_step.sum()) * tokens
                if not pipelined:  # spread emission: P is final before v's window starts (v waits one window)
                    reached = (spikes.cumsum(dim=0) > 0).flatten(1).sum(dim=1, dtype=torch.float64)
                    record["macs"] += float(reached[:-1].sum()) * tokens
                record["images"] += spikes.shape[1]
            self._record_steps(spikes.flatten(0, 1))
        return hook

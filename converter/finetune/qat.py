"""Quantisation-aware training (QAT) of a converted SNN through its quantised twin.

With exact neurons the step simulation computes the twin (converter/spiking/simulation.py), so training
the twin in closed form trains the SNN itself, at one UNet pass per step instead of T. What is
trained:

- thresholds, as LSQ step sizes (Esser et al., ICLR 2020): the twin's straight-through estimator
  (sdm.core.quantise) gives d level / d theta = (round(x/s) - x/s) inside the clip and 1 at it
  (s = theta / T); each threshold's gradient is scaled by LSQ's g = 1 / sqrt(N * T), N the
  activations that share it per input (H * W for a per-channel threshold), so step sizes learn at
  a rate comparable to the values they quantise; a projection after each step keeps them >= the
  calibration's MIN_THRESHOLD;
- the bias corrections (`output_shift`);
- optionally the weights: "all" (every UNet parameter), or "lora": a low-rank adapter
  W + up @ down (up starts at 0, so outputs start unchanged) on every convolution and linear
  layer, merged into the weights by `finish` (EfficientDM's recipe).

Optionally (--spike-penalty) the loss also charges the twin's spike rate (`SpikeCounter`): the
ON plus OFF counts of every neuron, per neuron and SNN step, through the same straight-through
estimator, so training can trade quality against spikes (energy).

`finish` turns everything back into a plain converted model (buffers, merged weights, step
simulation), so the result is an ordinary folder: compare.py, sdm-export and TSM fine-tuning
take it as they take any conversion.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...core.errors import SdmError
from ..spiking.layers import SpikingActivation
from ..spiking.model import SpikingUNet2DModel
from ..spiking.simulation import closed_form_obstacle
from ..spiking.tsm import has_tsm
from .settings import QAT_WEIGHTS
from .trainable import THRESHOLD_NAMES, freeze, make_parameters


class QatError(SdmError):
    """A model QAT cannot train: no quantised twin that its step simulation equals."""


def qat_obstacle(snn: SpikingUNet2DModel) -> str | None:
    """Why training the twin would not train this SNN, or None when it would."""
    if has_tsm(snn):
        return ("a TSM model has no quantised twin (p[t] scales single steps): QAT-train the converted model it "
                "came from, then TSM on top")
    for site in snn.sites().values():
        if not site.exact:
            return (f"site {site.site} has single-spike neurons, whose counts are not their twin's: re-convert "
                    f"with --neuron exact")
        if site.neuron.bounded:
            return (f"site {site.site} limits graded spikes to {site.neuron.max_payload} per step (< T), so its "
                    f"steps are not its twin: re-convert without --max-payload")
    return closed_form_obstacle(snn)


def check_trainable(snn: SpikingUNet2DModel) -> None:
    obstacle = qat_obstacle(snn)
    if obstacle:
        raise QatError(f"--method qat needs a model whose steps equal its quantised twin: {obstacle}")


class LowRankDelta(nn.Module):
    """Parametrisation W -> W + scale * up @ down (a LoRA adapter), in the weight's own shape."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        rows, cols = weight.shape[0], weight[0].numel()
        rank = min(rank, rows, cols)
        down = torch.randn((rank, cols), generator=generator) / math.sqrt(cols)
        self.down = nn.Parameter(down.to(device=weight.device, dtype=weight.dtype))
        self.up = nn.Parameter(torch.zeros((rows, rank), device=weight.device, dtype=weight.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.up @ self.down).view_as(weight)


def add_adapters(snn: SpikingUNet2DModel, rank: int, seed: int) -> int:
    """A LowRankDelta on every convolution and linear layer's weight; returns how many."""
    generator = torch.Generator().manual_seed(seed)
    layers = [m for m in snn.unet.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", LowRankDelta(layer.weight, rank, generator))
    return len(layers)


def merge_adapters(snn: SpikingUNet2DModel) -> None:
    """Fold every adapter into its weight: the layers are plain again, with the same state-dict keys."""
    for module in snn.unet.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def activations_per_threshold(snn: SpikingUNet2DModel) -> dict[str, int]:
    """N of LSQ's gradient scale per site: the values one channel's threshold quantises per input
    (H * W), read from one closed-form pass on a zero input."""
    config = snn.config
    sizes: dict[str, int] = {}

    def record(site: SpikingActivation, args: tuple[torch.Tensor, ...]) -> None:
        sizes[site.site] = args[0][0, 0].numel()

    hooks = [site.register_forward_pre_hook(record) for site in snn.sites().values()]
    like = next(snn.parameters())
    try:
        with torch.no_grad():
            snn(torch.zeros((1, config.in_channels, config.sample_size, config.sample_size), device=like.device,
                            dtype=like.dtype), 0)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def _scale_gradient(parameter: nn.Parameter, scale: float) -> None:
    parameter.register_hook(lambda grad: grad * scale)


def prepare(snn: SpikingUNet2DModel, weights: str = "none", rank: int = 4, seed: int = 0) -> list[tuple[str, nn.Parameter]]:
    """Make the twin trainable: closed-form simulation, thresholds and bias corrections as
    parameters (LSQ-scaled gradients), and the chosen weights. Returns (name, parameter) pairs."""
    if weights not in QAT_WEIGHTS:
        raise QatError(f"unknown QAT weight set {weights!r} (choose from {', '.join(QAT_WEIGHTS)})")
    if rank < 1:
        raise QatError(f"--rank must be >= 1, got {rank}")
    check_trainable(snn)
    snn.set_simulation("closed-form")
    sizes = activations_per_threshold(snn)
    make_parameters(snn, shifts=True)
    if weights == "lora":
        add_adapters(snn, rank, seed)
    for parameter in snn.parameters():
        parameter.requires_grad_(weights == "all")
    for site in snn.sites().values():
        site.output_shift.requires_grad_(True)
        for name in THRESHOLD_NAMES:
            threshold = getattr(site.neuron, name)
            threshold.requires_grad_(True)
            _scale_gradient(threshold, 1.0 / math.sqrt(sizes[site.site] * site.timesteps))
    if weights == "lora":
        for module in snn.unet.modules():
            if isinstance(module, LowRankDelta):
                module.down.requires_grad_(True)
                module.up.requires_grad_(True)
    return [(name, p) for name, p in snn.named_parameters() if p.requires_grad]


class SpikeCounter:
    """The twin's spike rate while active (a context manager): forward hooks on every spiking site
    add up, from the time-averaged current each site receives in closed form, its neurons' ON plus
    OFF counts as the twin computes them (`site.drive`, `neuron.counts`: whole numbers; under
    autograd with the straight-through estimator of sdm.core.quantise, so their sum has gradients
    to the thresholds, bias corrections, adapters and upstream weights).

    `rate()`: the counts of every pass since the last `reset()` over neurons * T, the mean spike
    units per neuron and SNN step, the unit of the "spike rate" of eval/compare.py (a unit is one
    threshold's worth of charge; exact neurons send a count as that many units).

    Activation checkpointing (core/diffusion.py `recomputed`) reruns each UNet pass in the backward
    pass, hooks included, and matches the tensors autograd saved by their order: keep the counter
    active through `backward()` so the rerun computes the same counts, and set `recording` False
    before it so they are not added a second time.
    """

    def __init__(self, snn: SpikingUNet2DModel) -> None:
        self.sites = list(snn.sites().values())
        self.handles: list[Any] = []
        self.recording = True
        self.reset()

    def reset(self) -> None:
        self.units: list[torch.Tensor] = []
        self.neuron_steps = 0

    def __enter__(self) -> SpikeCounter:
        self.handles = [site.register_forward_hook(self._count) for site in self.sites]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _count(self, site: SpikingActivation, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not site.closed_form:
            raise QatError(f"site {site.site} runs the step simulation: spike counts are taken from the closed-form twin")
        on, off = site.neuron.counts(site.drive(args[0]) * float(site.timesteps), site.timesteps)
        units = on.sum(dtype=torch.float64) if off is None else on.sum(dtype=torch.float64) + off.sum(dtype=torch.float64)
        if self.recording:
            self.units.append(units)
            self.neuron_steps += on.numel() * site.timesteps

    def rate(self) -> torch.Tensor:
        """Spike units per neuron and SNN step over the passes counted (float32, 0 if none)."""
        if not self.units:
            return torch.zeros(())
        return (torch.stack(self.units).sum() / self.neuron_steps).float()


QUANTISER_NAMES = THRESHOLD_NAMES + ("output_shift",)


def parameter_groups(named: list[tuple[str, nn.Parameter]], lr: float, weight_lr: float) -> list[dict]:
    """Adam groups: the quantisers' values (thresholds, bias corrections) at `lr`, weights or adapters at `weight_lr`."""
    quantisers = [p for name, p in named if name.endswith(QUANTISER_NAMES)]
    weights = [p for name, p in named if not name.endswith(QUANTISER_NAMES)]
    return [{"params": quantisers, "lr": lr}] + ([{"params": weights, "lr": weight_lr}] if weights else [])


def finish(snn: SpikingUNet2DModel) -> None:
    """Back to a plain converted model: adapters merged, buffers, nothing trainable, step simulation."""
    merge_adapters(snn)
    freeze(snn)
    snn.set_simulation("steps")


def threshold_changes(before: dict[str, dict[str, torch.Tensor]], snn: SpikingUNet2DModel) -> dict[str, dict[str, float]]:
    """Median ratio new / old threshold per layer kind (conv-input sites by their block role) and side."""
    groups: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, site in snn.sites().items():
        kind = site_kind(name)
        for side in THRESHOLD_NAMES:
            ratio = getattr(site.neuron, side).detach().float().cpu() / before[name][side]
            groups.setdefault(kind, {}).setdefault(side, []).append(ratio)
    return {kind: {side: round(float(torch.cat(values).median()), 4) for side, values in sides.items()}
            for kind, sides in groups.items()}


def thresholds_of(snn: SpikingUNet2DModel) -> dict[str, dict[str, torch.Tensor]]:
    """A CPU copy of every site's thresholds (for `threshold_changes`)."""
    return {name: {side: getattr(site.neuron, side).detach().float().cpu().clone() for side in THRESHOLD_NAMES}
            for name, site in snn.sites().items()}


def site_kind(name: str) -> str:
    """A site's layer kind from its ANN name: the input encoder, the first or second norm of a
    resnet block (by down/mid/up position), attention's norm, or the output norm."""
    part = "down" if name.startswith("down_blocks") else "mid" if name.startswith("mid_block") else \
        "up" if name.startswith("up_blocks") else "out"
    role = name.rsplit(".", 1)[-1]
    return f"{part}.{role}"

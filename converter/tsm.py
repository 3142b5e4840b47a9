"""Temporal-wise spiking mechanism (TSM) and what a fine-tuning run may train.

TSM (Cao et al., "Spiking Diffusion Models", IEEE TAI 2024) gives every spiking site a learnable
factor p[t] per SNN time step: the neuron's input drive at step t is multiplied by p[t]
(`SpikingActivation.forward`). `enable_tsm` creates the factors at 1.0, which leaves every output
exactly as it was; `sdm-finetune` (converter/finetune.py) then learns them.

Saving: p is per *time step*, so it cannot be folded into the (time-shared) weights or
thresholds of a plain export; a TSM model keeps p as a parameter `<site>.tsm` [T] in its state
dict and records `"tsm": true` in its config, so that `SpikingUNet2DModel.__init__` re-creates
the parameters before the weights load. `save_converted` / `load_converted` round-trip it bit for
bit; a folder without the flag is a plain model, as before.

Trainable thresholds: `set_trainable(snn, "thresholds")` turns each neuron's `threshold_pos` /
`threshold_neg` buffers into `nn.Parameter`s under the same attribute names, so state-dict keys
(and the saved folder) are unchanged; `freeze` turns them back into buffers. They are trained
directly (not through a log-scale), and `clamp_thresholds_` keeps them positive after each step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from sdm.calibration.thresholds import MIN_THRESHOLD
from sdm.converter.finetune_settings import TRAINABLE
from sdm.converter.layers import SpikingActivation
from sdm.core.errors import SdmError

if TYPE_CHECKING:
    from sdm.converter.model import SpikingUNet2DModel

THRESHOLD_NAMES = ("threshold_pos", "threshold_neg")


class TsmError(SdmError):
    """A TSM request that does not fit the model (unknown trainable set, no TSM)."""


def _sites(snn: nn.Module) -> dict[str, SpikingActivation]:
    return {m.site: m for m in snn.modules() if isinstance(m, SpikingActivation)}


def has_tsm(snn: "SpikingUNet2DModel") -> bool:
    sites = _sites(snn)
    return bool(sites) and all(site.tsm is not None for site in sites.values())


def enable_tsm(snn: "SpikingUNet2DModel") -> None:
    """Give every spiking site p = ones(T) (outputs unchanged); keeps factors already there."""
    for site in _sites(snn).values():
        if site.tsm is None:
            like = site.output_shift
            site.tsm = nn.Parameter(torch.ones(site.timesteps, device=like.device, dtype=like.dtype))
    snn.register_to_config(tsm=True)


def tsm_values(snn: "SpikingUNet2DModel") -> dict[str, list[float]]:
    """Learned p[t] per site (execution order); {} for a model without TSM."""
    return {name: site.tsm.detach().float().cpu().tolist() for name, site in _sites(snn).items() if site.tsm is not None}


def _buffer_to_parameter(module: nn.Module, name: str) -> nn.Parameter:
    value = getattr(module, name)
    if isinstance(value, nn.Parameter):
        return value
    del module._buffers[name]
    parameter = nn.Parameter(value.detach().clone())
    setattr(module, name, parameter)
    return parameter


def _parameter_to_buffer(module: nn.Module, name: str) -> None:
    if name in module._parameters:
        value = module._parameters.pop(name)
        module.register_buffer(name, value.detach().clone())


def make_parameters(snn: "SpikingUNet2DModel", shifts: bool) -> None:
    """Every neuron's thresholds (and with `shifts` every bias-correction current) as parameters
    under their buffer names, so state-dict keys stay the same (TSM and QAT training)."""
    for site in _sites(snn).values():
        for name in THRESHOLD_NAMES:
            _buffer_to_parameter(site.neuron, name)
        if shifts:
            _buffer_to_parameter(site, "output_shift")


def set_trainable(snn: "SpikingUNet2DModel", what: str) -> list[tuple[str, nn.Parameter]]:
    """Make exactly one nested set trainable and return it as (state-dict name, parameter) pairs.

    "p": the TSM factors only (TSM is enabled if it was not);
    "thresholds": p and every neuron's positive/negative thresholds;
    "all": p, thresholds, the bias-correction currents (`output_shift`) and all weights.
    Everything else gets `requires_grad = False`.
    """
    if what not in TRAINABLE:
        raise TsmError(f"unknown trainable set {what!r} (choose from {', '.join(TRAINABLE)})")
    enable_tsm(snn)
    sites = _sites(snn)
    if what in ("thresholds", "all"):
        make_parameters(snn, shifts=what == "all")
    for parameter in snn.parameters():
        parameter.requires_grad_(what == "all")
    for site in sites.values():
        site.tsm.requires_grad_(True)
        if what == "thresholds":
            for name in THRESHOLD_NAMES:
                getattr(site.neuron, name).requires_grad_(True)
    return [(name, p) for name, p in snn.named_parameters() if p.requires_grad]


def freeze(snn: "SpikingUNet2DModel") -> None:
    """Back to inference: thresholds and bias currents are buffers again, nothing requires grad."""
    for site in _sites(snn).values():
        for name in THRESHOLD_NAMES:
            _parameter_to_buffer(site.neuron, name)
        _parameter_to_buffer(site, "output_shift")
    for parameter in snn.parameters():
        parameter.requires_grad_(False)


@torch.no_grad()
def clamp_thresholds_(snn: "SpikingUNet2DModel", minimum: float = MIN_THRESHOLD) -> None:
    """Keep trained thresholds positive (a projection after each optimiser step)."""
    for site in _sites(snn).values():
        for name in THRESHOLD_NAMES:
            value = getattr(site.neuron, name)
            if isinstance(value, nn.Parameter):
                value.clamp_(min=minimum)

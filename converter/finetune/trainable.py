"""What a fine-tuning run may train: TSM factors, thresholds, bias currents, weights.

Trainable thresholds: `set_trainable(snn, "thresholds")` turns each neuron's `threshold_pos` /
`threshold_neg` buffers into `nn.Parameter`s under the same attribute names, so state-dict keys
(and the saved folder) are unchanged; `freeze` turns them back into buffers. They are trained
directly (not through a log-scale), and `clamp_thresholds_` keeps them positive after each step.
"""

from __future__ import annotations

import torch
from torch import nn

from ...calibration.thresholds import MIN_THRESHOLD
from ...core.errors import SdmError
from ..spiking.tsm import enable_tsm, spiking_sites
from .settings import TRAINABLE

THRESHOLD_NAMES = ("threshold_pos", "threshold_neg")


class TrainableError(SdmError):
    """A trainable set that does not exist."""


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


def make_parameters(snn: nn.Module, shifts: bool) -> None:
    """Every neuron's thresholds (and with `shifts` every bias-correction current) as parameters
    under their buffer names, so state-dict keys stay the same (TSM and QAT training)."""
    for site in spiking_sites(snn).values():
        for name in THRESHOLD_NAMES:
            _buffer_to_parameter(site.neuron, name)
        if shifts:
            _buffer_to_parameter(site, "output_shift")


def set_trainable(snn: nn.Module, what: str) -> list[tuple[str, nn.Parameter]]:
    """Make exactly one nested set trainable and return it as (state-dict name, parameter) pairs.

    "p": the TSM factors only (TSM is enabled if it was not);
    "thresholds": p and every neuron's positive/negative thresholds;
    "all": p, thresholds, the bias-correction currents (`output_shift`) and all weights.
    Everything else gets `requires_grad = False`.
    """
    if what not in TRAINABLE:
        raise TrainableError(f"unknown trainable set {what!r} (choose from {', '.join(TRAINABLE)})")
    enable_tsm(snn)
    sites = spiking_sites(snn)
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


def freeze(snn: nn.Module) -> None:
    """Back to inference: thresholds and bias currents are buffers again, nothing requires grad."""
    for site in spiking_sites(snn).values():
        for name in THRESHOLD_NAMES:
            _parameter_to_buffer(site.neuron, name)
        _parameter_to_buffer(site, "output_shift")
    for parameter in snn.parameters():
        parameter.requires_grad_(False)


@torch.no_grad()
def clamp_thresholds_(snn: nn.Module, minimum: float = MIN_THRESHOLD) -> None:
    """Keep trained thresholds positive (a projection after each optimiser step)."""
    for site in spiking_sites(snn).values():
        for name in THRESHOLD_NAMES:
            value = getattr(site.neuron, name)
            if isinstance(value, nn.Parameter):
                value.clamp_(min=minimum)

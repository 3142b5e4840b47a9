"""Two simulators of one converted model, one semantics.

"steps" runs the T SNN time steps (spikes, spike monitoring, TSM, hardware-faithful runs).
"closed-form" runs the model's quantised twin: every site replaced by its ideal quantiser on its
time-averaged input, GroupNorm, SiLU and attention evaluated once on the time average, one pass
of B rows per UNet call (the ANN's cost). With exact neurons and no TSM the two agree on every
neuron's count, up to float ties (converter/equivalence.py measures it). A TSM model (p[t] not all 1)
and per-step attention ("instant") have no closed form: the time average of their outputs is not
a function of the time-averaged input.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.errors import SdmError
from .layers import SpikingActivation, SpikingAttention

SIMULATIONS = ("steps", "closed-form")
CHOICES = SIMULATIONS + ("both",)  # what evaluation commands accept: "both" runs both and compares


class SimulationError(SdmError):
    """A simulation mode is unknown or does not apply to the model."""


def check_choice(mode: str, choices: tuple[str, ...] = CHOICES) -> str:
    if mode not in choices:
        raise SimulationError(f"unknown simulation {mode!r} (choose from {', '.join(choices)})")
    return mode


INSTANT_ATTENTION = "per-step attention (--attention instant) has no closed form: simulate it with steps"


def check_policy(mode: str, attention: str) -> None:
    """Refuse before any work a simulation the policy's model cannot have (TSM is checked on the model)."""
    check_choice(mode)
    if mode != "steps" and attention == "instant":
        raise SimulationError(INSTANT_ATTENTION)


def closed_form_obstacle(snn: nn.Module) -> str | None:
    """Why `snn` has no closed form, or None when it has one."""
    for module in snn.modules():
        if isinstance(module, SpikingActivation) and module.tsm is not None and not bool(torch.all(module.tsm == 1)):
            return f"a TSM model (p[t] not all 1, site {module.site}) has no closed form: simulate it with steps"
        if isinstance(module, SpikingAttention) and module.mode == "instant":
            return INSTANT_ATTENTION
    return None

"""Delta (sigma-delta) coding of spikes across denoising steps.

Consecutive UNet evaluations of one sampling trajectory see nearly the same input, so a neuron's
spikes at SNN step t of evaluation k differ little from those at step t of evaluation k - 1.
Under delta coding every side of an exact neuron keeps what it sent at each SNN step of the
previous evaluation and sends only the change: delta_{k,t} = e_{k,t} - e_{k-1,t} signed spike
units (e the whole-number units the side emits at step t, sdm.converter.spiking.neurons). The
receiver, which holds the same e_{k-1,t}, decodes e_{k,t} = e_{k-1,t} + delta_{k,t}: whole
numbers in float, so the decoded spikes equal the rate-coded ones bit for bit, and the network
computes exactly what it computes without the coding. What changes is what travels: |delta|
units instead of |e|, each still one synaptic event per unit and target. The first evaluation
of a trajectory is sent in full (its predecessor is silence). Under `spread` emission a side
codes its final count instead (GradedIFNode._delta_spread): the change is sent as |change|
binary spikes spread over the window, and the receiver spreads the decoded count as the side
would have.

State is per pass slot (the first batch row of a pass, see `SpikingUNet2DModel.forward`), so
a batch split into passes codes each sample against its own predecessor. A trajectory ends
when a slot's timesteps stop decreasing (every sampler walks t downwards; a new sample starts
again at a high t), when the slot's batch changes, or on `reset`; the state is then dropped.
Delta coding needs the step simulation of exact neurons: a single-spike neuron has no whole
units per side, and the closed form has no per-step spikes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ...core.errors import SdmError

CODINGS = ("rate", "delta")
DELTA_NEEDS_STEPS = "delta coding sends per-step spikes, which the closed form has none of: simulate it with steps"

# The pass being simulated (its first batch row): set by the model around each pass.
_SLOT: ContextVar[int] = ContextVar("delta_coding_slot", default=0)


class CodingError(SdmError):
    """A spike coding that is unknown or that the model cannot run."""


def check_coding(coding: str, simulation: str = "steps") -> str:
    """Refuse an unknown coding, or delta coding of a run simulated in closed form only."""
    if coding not in CODINGS:
        raise CodingError(f"unknown coding {coding!r} (choose from {', '.join(CODINGS)})")
    if coding == "delta" and simulation == "closed-form":
        raise CodingError(DELTA_NEEDS_STEPS)
    return coding


class DeltaState:
    """What one neuron's sides sent at each SNN step of the previous evaluation, per pass slot."""

    def __init__(self) -> None:
        self._sent: dict[int, list[torch.Tensor]] = {}
        self.events: torch.Tensor | None = None  # unsigned delta units per element of the last call [T, B, C, ...]
        self.side_events: list[torch.Tensor] = []  # the same per side

    def reset(self) -> None:
        self._sent.clear()
        self.events = None
        self.side_events = []

    def drop(self, slot: int) -> None:
        self._sent.pop(slot, None)

    def code(self, emitted: list[torch.Tensor]) -> list[torch.Tensor]:
        """Send the change of each side's per-step units [T, B, C, ...] against the previous
        evaluation of this slot; return what the receiver decodes (equal to `emitted`)."""
        slot = _SLOT.get()
        previous = self._sent.get(slot)
        if previous is None or [p.shape for p in previous] != [e.shape for e in emitted]:
            previous = [torch.zeros_like(e) for e in emitted]
        deltas = [e - p for e, p in zip(emitted, previous)]
        decoded = [p + d for p, d in zip(previous, deltas)]
        self._sent[slot] = [d.detach() for d in decoded]
        self.side_events = [d.detach().abs() for d in deltas]
        self.events = sum(self.side_events)
        return decoded


class TrajectoryTracker:
    """Which pass slots are inside a trajectory: each slot's last timesteps and batch size."""

    def __init__(self) -> None:
        self._last: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self._last.clear()

    def continues(self, slot: int, timesteps: torch.Tensor) -> bool:
        """Whether this call of `slot` continues its trajectory (same batch, every t lower than
        before); records the call either way."""
        last = self._last.get(slot)
        current = timesteps.detach().reshape(-1).to("cpu", torch.float64)
        self._last[slot] = current
        return last is not None and last.shape == current.shape and bool(torch.all(current < last))


@contextmanager
def in_slot(slot: int) -> Iterator[None]:
    """Within the block, neurons code against the state of the pass whose first batch row is `slot`."""
    token = _SLOT.set(slot)
    try:
        yield
    finally:
        _SLOT.reset(token)

"""The neurons of a spiking site: the exact graded neuron (default) and the single-spike IF neuron.

`GradedIFNode` ("exact", the default): an ON/OFF pair of soft-reset IF neurons that may emit
several spikes per step (graded spikes, as Loihi 2 carries them). At step t its dendrite hands it
the cumulative drive D_t = t * g_t (g_t the site's expectation-compensated target); the ON
neuron's count is clip(floor(D_t / theta_pos + f), 0, T) (sdm.core.quantise), the OFF neuron's the
same for -D_t with theta_neg, and each emits the change of its count, so a neuron only ever takes
back spikes it emitted itself (ST-BIF's bounded count). The counts are computed from D_t itself,
not by summing float increments, so after T steps they equal the quantised twin's exactly,
whatever the drive did on the way. With `max_payload` B < T a side emits at most B spikes per step
and carries the rest (B = T, the default, is exact).

When a side emits its count is free: downstream sites see only running means, so the network's
time-averaged output depends on each site's count at step T alone (the twin's). The emission
schedule (`onset`, `margin`; sdm.converter.spiking.policy) spends that freedom on fewer spike units: a side
emits nothing in its first `onset` steps, then follows increases of its target count at once and
takes back spikes only once the target has fallen more than `margin` units below what it has
emitted; at the last step it emits exactly the target. (0, 0) tracks the target every step
("eager"); onset T - 1 emits only at the last step ("deferred": |count| units, but a one-step
graded network). `spread` (the default schedule) sends the final count c as binary spikes, one
unit per step at most: by step t a side has sent round(t * c / T) units, i.e. what an eager
neuron holding its final drive would send. That needs c before step 1 of the site's window, so a
site's window starts when its inputs' windows end (a layer-pipelined network: the latency of one
UNet evaluation is its depth times T steps, its throughput one evaluation per T steps); in the
simulation, where all windows are aligned, the spikes are placed from the count at step T.

`SignedIFNode` ("single-spike", the neuron of earlier versions, kept for comparison): one spike
of +theta_pos or -theta_neg per step at most; it lags behind late or sign-swinging drive and mixes
+theta_pos and -theta_neg spikes into levels no quantiser models.

Both kinds: per-channel thresholds as buffers in the state dict (same names), threshold guidance
(`threshold_scale`), spikes leave the neuron weighted by their threshold (foldable into the next
layer's weights, so it stays an accumulate), and a monitor counting spikes: every unit of a graded
spike counts as one spike.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import surrogate
from spikingjelly.activation_based.neuron import SimpleBaseNode
from torch import nn

from ...core.quantise import signed_counts
from .delta import DeltaState

NEURON_KINDS = ("exact", "single-spike")


class SiteNeuron(nn.Module):
    """What both neuron kinds share: thresholds, threshold guidance, the twin's counts, the monitor."""

    def _setup(self, channels: int, signed: bool, membrane_init: float) -> None:
        self.signed = signed
        self.membrane_init = membrane_init
        self.threshold_scale = 1.0
        self.register_buffer("threshold_pos", torch.ones(channels))
        self.register_buffer("threshold_neg", torch.ones(channels))
        self.monitor = False
        self.reset_monitor()

    def thresholds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta_pos, theta_neg) with guidance applied, shaped to broadcast over `like` ([N, C, ...])."""
        shape = (1, -1) + (1,) * (like.dim() - 2)
        scale = self.threshold_scale
        return self.threshold_pos.view(shape) * scale, self.threshold_neg.view(shape) * scale

    def step_distance(self, cumulative: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """How far each side's count argument D / theta + f lies from the nearest integer (where a
        count steps), the smaller over the sides, for a cumulative drive [N, C, ...]: ties are the
        small ones. With `timesteps`, only integers 1..T count (the clipped count steps nowhere else)."""
        theta_pos, theta_neg = self.thresholds(cumulative)
        sides = [(cumulative.clamp_min(0), theta_pos)]
        if self.signed:
            sides.append(((-cumulative).clamp_min(0), theta_neg))
        distance = None
        for drive, theta in sides:
            u = drive / theta + self.membrane_init
            nearest = u.round()
            side = (u - nearest).abs()
            if timesteps is not None:
                side = side.masked_fill((nearest < 1) | (nearest > timesteps), float("inf"))
            distance = side if distance is None else torch.minimum(distance, side)
        return distance

    def counts(self, cumulative: torch.Tensor, timesteps: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ideal (ON, OFF) counts for a cumulative drive [N, C, ...]: the quantised twin's neuron."""
        theta_pos, theta_neg = self.thresholds(cumulative)
        return signed_counts(cumulative, theta_pos, theta_neg, timesteps, self.membrane_init, self.signed)

    def count_spikes(self, spikes: float | torch.Tensor, neuron_steps: int) -> None:
        """While monitoring, add a count of spike units (a tensor on the neuron's device, or a number)
        over `neuron_steps`. Counts stay where they were computed: reading one on CUDA waits for the
        device, so the sum is read once, by `spike_count`, not per site and step."""
        if self.monitor:
            self._spikes = self._spikes + spikes
            self.neuron_steps += neuron_steps

    @property
    def spike_count(self) -> float:
        """Spike units emitted since `reset_monitor()` (one host read of the accumulated count)."""
        return float(self._spikes)

    def reset_monitor(self) -> None:
        self._spikes: torch.Tensor | float = 0.0
        self.neuron_steps = 0
        self.sent_units = None


class GradedIFNode(SiteNeuron):
    """ON/OFF graded-spike IF neurons whose counts track the quantised cumulative drive (see above).

    Stateless between calls: one call takes a whole [T, B, C, ...] sequence of cumulative drives
    and returns the weighted spikes theta_pos * dON_t - theta_neg * dOFF_t of every step.
    """

    def __init__(self, channels: int, signed: bool, membrane_init: float, timesteps: int,
                 max_payload: int | None = None, onset: int = 0, margin: int = 0, spread: bool = False) -> None:
        super().__init__()
        self._setup(channels, signed, membrane_init)
        self.timesteps = timesteps
        self.max_payload = max_payload
        self.onset, self.margin, self.spread = onset, margin, spread
        self.delta: DeltaState | None = None  # set while the model runs delta coding (converter/spiking/delta.py)
        self.sent_units: torch.Tensor | None = None  # while monitoring: units sent per element and step, last call

    def reset(self) -> None:
        """Nothing to clear: no state outlives a call (same interface as the single-spike neuron)."""

    @property
    def bounded(self) -> bool:
        """Whether a payload bound can hold a side back (spread emission never sends more than 1)."""
        return self.max_payload is not None and self.max_payload < self.timesteps and not self.spread

    def forward(self, cumulative: torch.Tensor) -> torch.Tensor:
        steps = cumulative.shape[0]
        if self.spread:  # only the final count matters: count the last step alone
            on, off = self.counts(cumulative[-1], self.timesteps)
            sides = [_spread(side, steps) for side in (on, off) if side is not None]
        else:
            on, off = self.counts(cumulative.flatten(0, 1), self.timesteps)
            sides = [self._emitted(side.unflatten(0, (steps, -1))) for side in (on, off) if side is not None]
        if self.delta is not None and self.spread:
            changes = self._delta_spread(sides)
        else:
            changes = [_changes(side) for side in sides]
            if self.delta is not None:
                changes = self.delta.code(changes)
        theta_pos, theta_neg = self.thresholds(cumulative[0])
        spikes = theta_pos * changes[0]
        if self.signed:
            spikes = spikes - theta_neg * changes[1]
        if self.monitor:
            sent = self.delta.events if self.delta is not None else sum(c.detach().abs() for c in changes)
            # what each element sent at each step, in whole units per side: the spikes' value alone cannot say
            # (a take-back of -theta_pos would read as OFF spikes of theta_neg)
            self.sent_units = sent.to(torch.uint8)
            self.count_spikes(sent.sum(), spikes.numel())
        return spikes

    def _delta_spread(self, sides: list[torch.Tensor]) -> list[torch.Tensor]:
        """Delta coding of spread emission: each side sends the change of its final count against
        the previous evaluation, as binary spikes spread over the window (|change| events); the
        receiver adds it to the count it holds and spreads the result as the side itself would."""
        steps = sides[0].shape[0]
        finals = self.delta.code([side[-1:] for side in sides])
        changes = [_changes(_spread(final[0], steps)) for final in finals]
        self.delta.events = sum(_changes(_spread(event[0], steps)) for event in self.delta.side_events)
        return changes

    def _emitted(self, counts: torch.Tensor) -> torch.Tensor:
        """Counts actually emitted by each step: the ideal ones, or as the emission schedule holds
        them back before the last step, or with at most B spikes per step chasing them (the
        remainder carried to later steps)."""
        if not self.bounded and self.onset <= 0 and self.margin <= 0:
            return counts
        last = counts.shape[0] - 1
        emitted, total = [], counts[0] * 0  # zeros derived from the input, so traced graphs keep a dynamic batch
        for step, target in enumerate(counts):
            if step < last and step < self.onset:
                target = total
            elif step < last and self.margin > 0:
                fall = total - target
                target = torch.where((fall > 0) & (fall <= self.margin), total, target)
            if self.bounded:
                target = total + (target - total).clamp(-float(self.max_payload), float(self.max_payload))
            total = target
            emitted.append(total)
        return torch.stack(emitted)


def _spread(final: torch.Tensor, steps: int) -> torch.Tensor:
    """[T, ...] counts sent by each step when a final count c <= T goes out as round(t * c / T) by
    step t (halves up): whole numbers rising by 0 or 1 per step, c at step T. Under autograd the
    gradient is that of the linear ramp t * c / T (straight through the rounding)."""
    t = torch.arange(1, steps + 1, device=final.device, dtype=final.dtype).view(-1, *([1] * final.dim()))
    ramp = final.unsqueeze(0) * t
    exact = torch.div(2 * ramp.detach() + steps, 2 * steps, rounding_mode="floor")
    if final.requires_grad:
        return ramp / steps + (exact - ramp / steps).detach()
    return exact


def _changes(counts: torch.Tensor) -> torch.Tensor:
    """Per-step change of a [T, ...] count sequence (the first step's from 0): whole numbers."""
    if counts.requires_grad:
        return torch.cat([counts[:1], counts[1:] - counts[:-1]])
    changes = counts.clone()
    changes[1:] -= counts[:-1]
    return changes


class SignedIFNode(SiteNeuron, SimpleBaseNode):
    """Multi-step IF neuron, soft reset, per-channel thresholds, optional negative spikes.

    The membrane starts at `membrane_init * threshold` (0.5 makes the spike count round to
    nearest instead of truncating). It is stored shifted by that initial value, so `v` starts at
    0 and a positive spike fires at `v >= (1 - membrane_init) * theta_pos`.
    """

    def __init__(self, channels: int, signed: bool, membrane_init: float = 0.5) -> None:
        SimpleBaseNode.__init__(self, v_threshold=1.0, v_reset=None, surrogate_function=surrogate.ATan(), step_mode="m")
        self._setup(channels, signed, membrane_init)

    def firing_levels(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(theta_pos, theta_neg, fire_pos, fire_neg) shaped like one step: a spike of +theta_pos
        fires when the (shifted) membrane reaches fire_pos, one of -theta_neg at fire_neg."""
        theta_pos, theta_neg = self.thresholds(like)
        margin = 1.0 - self.membrane_init
        return theta_pos, theta_neg, margin * theta_pos, -margin * theta_neg

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + x

    def neuronal_fire(self) -> torch.Tensor:
        theta_pos, theta_neg = self.thresholds(self.v)
        margin = 1.0 - self.membrane_init
        weighted = theta_pos * self.surrogate_function(self.v - margin * theta_pos)
        if self.signed:
            weighted = weighted - theta_neg * self.surrogate_function(-self.v - margin * theta_neg)
        return weighted

    def neuronal_reset(self, spike: torch.Tensor) -> None:
        # Soft reset: subtract exactly what was emitted (+theta_pos or -theta_neg).
        self.v = self.v - (spike.detach() if self.detach_reset else spike)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        weighted = super().single_step_forward(x)
        self._count(weighted)
        return weighted

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().multi_step_forward(x_seq)
        return self.inference_steps(x_seq, in_place=False)

    def inference_steps(self, x_seq: torch.Tensor, in_place: bool) -> torch.Tensor:
        """The autograd path's arithmetic without autograd bookkeeping.

        in_place: write each step's spikes over that step's drive once the membrane has taken it
        in (x_seq is consumed and returned as the spikes): no per-step buffers, for the owner of a
        fresh drive tensor. Graph tracing (ONNX) needs in_place=False.
        """
        theta_pos, theta_neg, fire_pos, fire_neg = self.firing_levels(x_seq[0])
        silent = theta_pos.new_zeros(())
        v = self.v  # a float after reset, so the first step starts from x itself (keeps traced shapes dynamic)
        outputs = []
        for x in x_seq:
            v = x + v
            out = x if in_place else None
            weighted = torch.where(v >= fire_pos, theta_pos, silent, out=out)
            if self.signed:
                weighted = torch.where(v <= fire_neg, -theta_neg, weighted, out=out)
            v = v.sub_(weighted) if in_place else v - weighted
            outputs.append(weighted)
            self._count(weighted)
        self.v = v
        return x_seq if in_place else torch.stack(outputs)

    def _count(self, weighted: torch.Tensor) -> None:
        if self.monitor:
            self.count_spikes(torch.count_nonzero(weighted), weighted.numel())

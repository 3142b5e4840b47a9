"""Integrate-and-fire neurons with soft reset, built on spikingjelly's neuron base class.

One class covers both neuron kinds the converter uses:
- unsigned: a plain IF neuron (fires +1 when the membrane reaches the threshold);
- signed: also fires -1 when the membrane falls to the negative threshold, so a neuron can
  express negative values (SiLU's negative lobe) and take back an early, too-eager spike.

Thresholds are per channel and live in the state dict as buffers; the membrane is spikingjelly
memory (outside the state dict, cleared by `reset()`). Spikes leave the neuron already weighted
by their threshold (`+theta_pos` or `-theta_neg`), which is what the next layer's synapses add
up: the weighting can be folded into that layer's weights, so it stays an accumulate.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import surrogate
from spikingjelly.activation_based.neuron import SimpleBaseNode


class SignedIFNode(SimpleBaseNode):
    """Multi-step IF neuron, soft reset, per-channel thresholds, optional negative spikes.

    The membrane starts at `membrane_init * threshold` (0.5 makes the spike count round to
    nearest instead of truncating). It is stored shifted by that initial value, so `v` starts at
    0 and a positive spike fires at `v >= (1 - membrane_init) * theta_pos`.
    """

    def __init__(self, channels: int, signed: bool, membrane_init: float = 0.5) -> None:
        super().__init__(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.ATan(), step_mode="m")
        self.signed = signed
        self.membrane_init = membrane_init
        self.threshold_scale = 1.0
        self.register_buffer("threshold_pos", torch.ones(channels))
        self.register_buffer("threshold_neg", torch.ones(channels))
        self.monitor = False
        self.reset_monitor()

    def _thresholds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (like.dim() - 2)
        scale = self.threshold_scale
        return self.threshold_pos.view(shape) * scale, self.threshold_neg.view(shape) * scale

    def firing_levels(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(theta_pos, theta_neg, fire_pos, fire_neg) shaped like one step: a spike of +theta_pos
        fires when the (shifted) membrane reaches fire_pos, one of -theta_neg at fire_neg."""
        theta_pos, theta_neg = self._thresholds(like)
        margin = 1.0 - self.membrane_init
        return theta_pos, theta_neg, margin * theta_pos, -margin * theta_neg

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + x

    def neuronal_fire(self) -> torch.Tensor:
        theta_pos, theta_neg = self._thresholds(self.v)
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
            self.record_spikes(torch.count_nonzero(weighted), weighted.numel())

    def record_spikes(self, spikes: torch.Tensor | int, neuron_steps: int) -> None:
        """Add a count of spikes (a tensor on the neuron's device, or an int) over `neuron_steps`.

        Counts stay where they were computed: reading one on CUDA waits for the device, so the
        sum is read once, by `spike_count`, not per site and step.
        """
        self._spikes = self._spikes + spikes
        self.neuron_steps += neuron_steps

    @property
    def spike_count(self) -> float:
        """Spikes emitted since `reset_monitor()` (one host read of the accumulated count)."""
        return float(self._spikes)

    def reset_monitor(self) -> None:
        self._spikes: torch.Tensor | int = 0
        self.neuron_steps = 0

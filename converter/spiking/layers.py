"""Spiking replacements for the parts of a diffusers UNet that are not linear.

Tensors inside the converted UNet carry the SNN time steps folded into the batch, t-major:
[T*B, C, H, W]. Linear layers (convolutions, up/down sampling) run once on all T*B inputs;
only the neurons step through t. Because the UNet is linear between its sites, the time average
of every current equals what the ANN computes on the time-averaged spikes.

Expectation compensation: a nonlinear map g (GroupNorm + SiLU at a site, softmax attention) is
evaluated on the running mean m_t of its input, and the increment t*g(m_t) - (t-1)*g(m_(t-1))
is passed on. After T steps the accumulated output is exactly T*g(mean input), so the
nonlinearity sees the same average the ANN would, not one noisy time step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import site_kernel
from .neurons import NEURON_KINDS, GradedIFNode, SignedIFNode


def _functional() -> bool:
    """Out-of-place arithmetic is needed for autograd and for graph tracing (ONNX export);
    otherwise the sites work in place on buffers they own."""
    return torch.is_grad_enabled() or torch.jit.is_tracing()


def _time_index(timesteps: int, like: torch.Tensor) -> torch.Tensor:
    """1, 2, ..., T shaped to broadcast over a [T, B, ...] sequence."""
    return torch.arange(1, timesteps + 1, device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _cumsum(seq: torch.Tensor) -> torch.Tensor:
    """Cumulative sum over SNN time, accumulated in float64 and rounded once to seq's dtype.

    This is what CPU cumsum does for float32 by itself (and the site kernel too); CUDA's cumsum
    accumulates float32 in float32, so asking for float64 makes the running means, and thus
    the spikes, the same on every device.
    """
    return seq.cumsum(dim=0, dtype=torch.float64).to(seq.dtype)


def _running_mean(seq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """cumsum(seq, 0) / t as a new tensor, outside autograd: fused when the kernel applies."""
    if site_kernel.applicable(seq):
        return site_kernel.running_mean(seq)
    return _cumsum(seq).div_(t)


def expectation_increments(fn, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Per-step increments of t * fn(running mean of x) for x of shape [T*B, ...].

    Outside autograd and tracing the same arithmetic runs in place (one running-mean and one output
    buffer per call, not five), which keeps the site's memory traffic near the ANN's.
    """
    seq = x.unflatten(0, (timesteps, -1))
    t = _time_index(timesteps, seq)
    if not _functional():
        accumulated = fn(_running_mean(seq, t).flatten(0, 1)).unflatten(0, (timesteps, -1)).mul_(t)
        for step in range(timesteps - 1, 0, -1):  # backwards, so each step still sees its predecessor
            accumulated[step].sub_(accumulated[step - 1])
        return accumulated.flatten(0, 1)
    running = _cumsum(seq) / t
    accumulated = fn(running.flatten(0, 1)).unflatten(0, (timesteps, -1)) * t
    increments = accumulated.clone()
    increments[1:] -= accumulated[:-1]
    return increments.flatten(0, 1)


class FrozenGroupNorm(nn.Module):
    """GroupNorm with per-group statistics fixed from calibration: an affine map per channel."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.register_buffer("group_mean", torch.zeros(norm.num_groups))
        self.register_buffer("group_var", torch.ones(norm.num_groups))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        per_channel = h.shape[1] // self.num_groups
        mean = self.group_mean.repeat_interleave(per_channel).view(1, -1, *([1] * (h.dim() - 2)))
        std = (self.group_var + self.eps).sqrt().repeat_interleave(per_channel).view_as(mean)
        scale = self.weight.view_as(mean) if self.weight is not None else 1.0
        shift = self.bias.view_as(mean) if self.bias is not None else 0.0
        return (h - mean) / std * scale + shift


class TimeFolded(nn.Module):
    """A module whose tensors carry T SNN time steps folded into the batch, or, in closed form,
    one time average per input (`closed_form`, set by SpikingUNet2DModel.set_simulation)."""

    timesteps: int
    closed_form: bool = False

    @property
    def folded_steps(self) -> int:
        """Rows per input in the tensors this module sees: T when simulating steps, 1 in closed form."""
        return 1 if self.closed_form else self.timesteps


class SpikingActivation(TimeFolded):
    """A site of the ANN (GroupNorm then activation) as dendrite + spiking neuron.

    With identity norm and activation it encodes an analog signal (the input image) as spikes.

    The dendrite turns the input current into the neuron's target on the running mean m_t: for
    signed neurons g_t = clip(act(norm(m_t)), -theta_neg, theta_pos); for the ReLU proxy
    g_t = norm(m_t), which the neuron rectifies. The exact neuron gets the cumulative drive t * g_t
    (computed from g_t directly), the single-spike neuron its increments t * g_t - (t-1) * g_(t-1).
    TSM multiplies the increment at step t by a learnable p[t] (the cumulative drive is then their
    running sum). In closed form the input is the time average itself and the site is its twin:
    theta_pos * ON - theta_neg * OFF counts of T * g, over T.

    The site emits spikes (or levels) only: its bias correction `output_shift` is folded into the
    bias of the layer it feeds (converter/spiking/residual.py), so that layer's input is spikes.
    """

    def __init__(self, site: str, norm: nn.Module, activation: nn.Module, channels: int, timesteps: int,
                 signed: bool, membrane_init: float, neuron: str = "exact", max_payload: int | None = None,
                 emission: tuple[int, int, bool] = (0, 0, False)) -> None:
        super().__init__()
        self.site = site
        self.timesteps = timesteps
        self.norm = norm
        self.activation = activation
        if neuron == "exact":
            self.neuron = GradedIFNode(channels, signed=signed, membrane_init=membrane_init, timesteps=timesteps,
                                       max_payload=max_payload, onset=emission[0], margin=emission[1],
                                       spread=emission[2])
        elif neuron == "single-spike":
            self.neuron = SignedIFNode(channels, signed=signed, membrane_init=membrane_init)
        else:
            raise ValueError(f"unknown neuron kind {neuron!r} (choose from {', '.join(NEURON_KINDS)})")
        self.register_buffer("output_shift", torch.zeros(channels))
        self.tsm: nn.Parameter | None = None

    @property
    def exact(self) -> bool:
        return isinstance(self.neuron, GradedIFNode)

    def drive(self, running: torch.Tensor) -> torch.Tensor:
        """The neuron's target for a running-mean input (before the per-step difference)."""
        z = self.norm(running)
        if not self.neuron.signed:
            return z
        high, low = self.neuron.thresholds(z)
        low = -low
        target = self.activation(z)
        if _functional() or target is running:  # identity sites: never clamp the caller's tensor in place
            return torch.clamp(target, min=low, max=high)
        return target.clamp_(min=low, max=high)

    def drive_sequence(self, current: torch.Tensor) -> torch.Tensor:
        """The single-spike neuron's input at each SNN step, [T, B, ...], for a [T*B, ...] current."""
        drive = expectation_increments(self.drive, current, self.timesteps).unflatten(0, (self.timesteps, -1))
        if self.tsm is not None:
            drive = drive * self.tsm.view(-1, *([1] * (drive.dim() - 1)))
        return drive

    def cumulative_drive(self, current: torch.Tensor) -> torch.Tensor:
        """The exact neuron's input, [T, B, ...]: t * g_t, or with TSM the running sum of p[t] times
        the increments."""
        if self.tsm is not None:
            return _cumsum(self.drive_sequence(current))
        seq = current.unflatten(0, (self.timesteps, -1))
        t = _time_index(self.timesteps, seq)
        if not _functional():
            return self.drive(_running_mean(seq, t).flatten(0, 1)).unflatten(0, (self.timesteps, -1)).mul_(t)
        return self.drive((_cumsum(seq) / t).flatten(0, 1)).unflatten(0, (self.timesteps, -1)) * t

    def decision_distance(self, current: torch.Tensor) -> torch.Tensor:
        """Exact neurons: per step [T, B, ...], how far (in thresholds) each side's count argument
        D_t / theta + f lies from the integer where its count changes: ties are the small ones."""
        cumulative = self.cumulative_drive(current)
        return self.neuron.step_distance(cumulative.flatten(0, 1)).unflatten(0, cumulative.shape[:2])

    def mean_input(self, current: torch.Tensor) -> torch.Tensor:
        """The time average of a [T*B, ...] input current as the neurons see it (the running mean
        at t = T), [B, ...]: what the twin takes to reproduce this call's counts exactly."""
        seq = current.unflatten(0, (self.timesteps, -1))
        return _running_mean(seq, _time_index(self.timesteps, seq))[-1]

    def twin(self, mean_current: torch.Tensor) -> torch.Tensor:
        """The site's ideal quantiser on a time-averaged input current [B, ...] (closed form)."""
        neuron = self.neuron
        if site_kernel.applicable(mean_current, neuron.threshold_pos, neuron.threshold_neg):
            values = self.norm(mean_current)
            values = self.activation(values) if neuron.signed else values
            return site_kernel.twin(values.contiguous(), neuron, self.timesteps)
        cumulative = self.drive(mean_current) * float(self.timesteps)
        on, off = self.neuron.counts(cumulative, self.timesteps)
        theta_pos, theta_neg = self.neuron.thresholds(cumulative)
        level = theta_pos * on if off is None else theta_pos * on - theta_neg * off
        return level / self.timesteps

    def shift_like(self, like: torch.Tensor) -> torch.Tensor:
        """The bias-correction shift shaped to broadcast over `like` ([N, C, ...])."""
        return self.output_shift.view(1, -1, *([1] * (like.dim() - 2)))

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """All T steps of the site, from rest (or its twin in closed form). The final membranes are
        dropped, not kept until the next reset: held for every site they would double the UNet's
        working memory at T = 1."""
        if self.closed_form:
            return self.twin(current)
        self.neuron.reset()
        tsm = () if self.tsm is None else (self.tsm,)
        # the kernel returns spikes and their total only: delta coding and a monitored exact neuron (which records
        # the units each element sends) need the per-side emissions of GradedIFNode.forward
        per_side = self.exact and (self.neuron.delta is not None or self.neuron.monitor)
        if not per_side and site_kernel.applicable(current, self.neuron.threshold_pos, self.neuron.threshold_neg,
                                                      self.output_shift, *tsm):
            return self._fused_forward(current)
        if self.exact:
            spikes = self.neuron(self.cumulative_drive(current)).flatten(0, 1)
        else:
            drive = self.drive_sequence(current)
            if _functional():
                spikes = self.neuron(drive).flatten(0, 1)
            else:
                spikes = self.neuron.inference_steps(drive, in_place=True).flatten(0, 1)
            self.neuron.reset()
        return spikes

    def _fused_forward(self, current: torch.Tensor) -> torch.Tensor:
        """forward() with the site kernel: the same arithmetic, one pass over memory per stage."""
        # No name holds the running mean: it is freed as soon as the norm has read it.
        values = self.norm(site_kernel.running_mean(current.unflatten(0, (self.timesteps, -1))).flatten(0, 1))
        neuron = self.neuron
        if neuron.signed:
            values = self.activation(values)
        tsm = None if self.tsm is None else self.tsm.detach()
        no_shift = torch.zeros_like(self.output_shift)  # folded into the consumer's bias instead
        spikes, count = site_kernel.fire(values.contiguous().unflatten(0, (self.timesteps, -1)), neuron,
                                         no_shift, tsm)
        neuron.count_spikes(count, spikes.numel())
        return spikes.flatten(0, 1)


class SpikingResnetBlock2D(nn.Module):
    """diffusers ResnetBlock2D with both GroupNorm+SiLU sites spiking; convs then add spikes."""

    def __init__(self, block: nn.Module, site1: SpikingActivation, site2: SpikingActivation) -> None:
        super().__init__()
        self.site1, self.site2 = site1, site2
        self.conv1, self.conv2 = block.conv1, block.conv2
        self.time_emb_proj = block.time_emb_proj
        self.temb_activation = block.nonlinearity
        self.skip_time_act = block.skip_time_act
        self.dropout = block.dropout
        self.conv_shortcut = block.conv_shortcut
        self.output_scale_factor = block.output_scale_factor

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        hidden = self.conv1(self.site1(input_tensor))
        if self.time_emb_proj is not None and temb is not None:
            # Constant over SNN time (temb repeats over t): a bias current projected once per input.
            steps = self.site1.folded_steps
            emb = temb.unflatten(0, (steps, -1))[0]
            emb = emb if self.skip_time_act else self.temb_activation(emb)
            bias = self.time_emb_proj(emb)[:, :, None, None]
            hidden = (hidden.unflatten(0, (steps, -1)) + bias).flatten(0, 1)
        hidden = self.conv2(self.dropout(self.site2(hidden)))
        shortcut = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        return (shortcut + hidden) / self.output_scale_factor


class SpikingAttention(TimeFolded):
    """Softmax self-attention kept analog, on the running mean ("running") or per step ("instant").

    In closed form (running mode only) it is evaluated once, on the time average.

    The attention arithmetic is written out here (the same as diffusers' AttnProcessor2_0 for a
    spatial self-attention block) with shape-agnostic reshapes, so exported graphs keep a
    dynamic batch; the mapping refuses attention variants this does not cover.
    """

    def __init__(self, attention: nn.Module, timesteps: int, mode: str) -> None:
        super().__init__()
        self.attention = attention
        self.timesteps = timesteps
        self.mode = mode

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attention
        height, width = x.shape[2], x.shape[3]
        tokens = x.flatten(2)  # [B, C, HW]
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens)
        tokens = tokens.transpose(1, 2).contiguous()  # [B, HW, C], once for all three projections
        q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        heads = attn.heads
        q, k, v = (y.unflatten(2, (heads, -1)).transpose(1, 2) for y in (q, k, v))
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        out = attn.to_out[1](attn.to_out[0](mixed)).transpose(1, 2).unflatten(2, (height, width)).contiguous()
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.mode == "instant" or self.closed_form:
            return self.self_attention(hidden_states)
        return expectation_increments(self.self_attention, hidden_states, self.timesteps)


class ConstantOverTime(TimeFolded):
    """Run a module once per UNet call on an input that is the same at every SNN time step.

    The spiking UNet repeats its input and timestep T times (t-major); for the analog input
    current conv_in(x) and the timestep embedding MLP the T copies are identical, so computing
    them once and repeating the result gives bit-identical outputs for 1/T of the work.
    """

    def __init__(self, module: nn.Module, timesteps: int) -> None:
        super().__init__()
        self.module = module
        self.timesteps = timesteps

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        steps = self.folded_steps
        once = self.module(x.unflatten(0, (steps, -1))[0], *args, **kwargs)
        return once if steps == 1 else once.repeat(steps, *([1] * (once.dim() - 1)))

"""Spike-driven consumers: layers whose input is a site's spikes, and spiking attention.

Bias folding. A site's bias correction b (a constant per channel, `output_shift`) is not added to
its spikes; the layer it feeds adds the response of that constant instead: layer(s + b) =
layer(s) + layer_without_bias(b). For a projection that response is a constant vector; through a
zero-padded convolution it is not a constant at the borders (fewer taps see the input there), so
the response is computed as the convolution of the constant map itself, borders included, and
equals the unfolded result within float rounding. The response depends only on b, the weights and
the shape, so on a chip it is a precomputed bias map; here it is evaluated per call on one image.

The residual stream gets identity sites (SpikingActivation with identity norm and activation)
wherever an analog value feeds a convolution or projection; `SpikeDriven` runs such a site before
its consumer. Attention comes at two levels: `residual` (q/k/v projections spike-driven, the
softmax attention on the running means of q, k, v, analog) and `full` (q, k, v, the attention
output and, by policy, the softmax probabilities are spikes too; Q K^T and P V are products with
spike trains, see `spiking_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SpikingActivation, TimeFolded, expectation_increments


def feeding_site(layer: nn.Module) -> SpikingActivation | None:
    """The site whose spikes `layer` consumes, or None for a layer with an analog input."""
    return layer.__dict__.get("_feeding_site")


def _remember_site(layer: nn.Module, site: SpikingActivation) -> None:
    # A plain attribute, not a child module: the site is registered where it runs, once.
    object.__setattr__(layer, "_feeding_site", site)


class FoldedConv2d(nn.Conv2d):
    """A convolution fed by a site's spikes, with that site's bias correction folded in.

    `input_pad` (left, right, top, bottom) is zero padding applied to the spikes before this
    convolution (Downsample2D's asymmetric pad): the bias correction is absent there, as it is
    in the unfolded model.
    """

    input_pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def shift_response(self, x: torch.Tensor) -> torch.Tensor:
        """layer_without_bias(b) for inputs shaped like x: [1, out, H', W'], borders exact."""
        left, right, top, bottom = self.input_pad
        shift = feeding_site(self).output_shift
        height, width = x.shape[-2] - top - bottom, x.shape[-1] - left - right
        constant = shift.view(1, -1, 1, 1).expand(1, shift.numel(), height, width)
        return self._conv_forward(F.pad(constant, self.input_pad), self.weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.shift_response(x)


class FoldedLinear(nn.Linear):
    """A projection fed by a site's spikes (features last), with the bias correction folded in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(feeding_site(self).output_shift, self.weight)


def fold(layer: nn.Module, site: SpikingActivation, input_pad: tuple[int, int, int, int] | None = None) -> nn.Module:
    """`layer` (Conv2d or Linear, parameters shared) as its folded counterpart fed by `site`.

    The folded module is a subclass of the original type, so state-dict names are unchanged.
    """
    if isinstance(layer, nn.Conv2d):
        folded = FoldedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                              bias=layer.bias is not None, padding_mode=layer.padding_mode, device="meta")
        if input_pad is not None:
            folded.input_pad = input_pad
    elif isinstance(layer, nn.Linear):
        folded = FoldedLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    else:
        raise TypeError(f"cannot fold a bias correction into {type(layer).__name__}")
    folded.weight = layer.weight
    folded.bias = layer.bias
    folded.train(layer.training)
    _remember_site(folded, site)
    return folded


class SpikeDriven(nn.Module):
    """A residual-stream site followed by the module it feeds (a shortcut conv, a resampler).

    A resampler keeps its own forward (Downsample2D pads, Upsample2D up-samples by nearest
    neighbour: up-sampled spikes are still spikes), its convolution folded.
    """

    def __init__(self, site: SpikingActivation, module: nn.Module) -> None:
        super().__init__()
        self.site = site
        self.module = module

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.module(self.site(x), *args, **kwargs)


def _channels_first_site(site: SpikingActivation, tokens: torch.Tensor) -> torch.Tensor:
    """Run a site on [TB, N, C] tokens (sites take channels at dim 1)."""
    return site(tokens.transpose(1, 2).contiguous()).transpose(1, 2)


def spiking_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, timesteps: int, scale: float,
                      probability_site: SpikingActivation | None = None,
                      shifts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Softmax attention of spike trains q, k, v ([T*B, N, C], t-major) by expectation compensation,
    the probabilities P analog or spiking too (`probability_site`, channels = heads).

    With A_t, B_t, S_t the running sums of q, k, v (spike counts weighted by their thresholds):
    the product A_t B_t^T grows by q_t B_t^T + A_{t-1} k_t^T, each a spike selecting stored sums
    (accumulates); softmax is evaluated on the running mean A_t B_t^T / t^2 (analog, elementwise),
    giving P_t. The output at step t is the increment of t P_t (S_t / t), whose sum over the T steps
    is T * P_T v_bar:
    - analog P: the increment is P_t v_t (a v spike selects a column of P_t: accumulates) plus
      (P_t - P_{t-1}) S_{t-1} (float MACs, zero where nothing was emitted before step t, so none
      under the `deferred` emission schedule); the result is attention on the time-averaged spikes;
    - spiking P: P's site is driven by the increments t P_t - (t-1) P_{t-1} (its running mean is
      P_t) and emits spikes p_t with running sum R_t, which replaces t P_t: R_t S_t grows by
      p_t S_{t-1} + R_t v_t, spikes selecting stored sums only (accumulates); the result is
      attention on the time-averaged spikes with P quantised by its site's twin.

    `shifts`: the q, k, v sites' bias corrections (b_q, b_k, b_v), folded exactly (P's own, b_p per
    head, is its site's `output_shift`): softmax over keys ignores what is constant along a row, so
    b_k drops out and b_q leaves a per-key score bias b_q . B_t / t (one accumulate per k spike);
    (R_t / t + b_p)(S_t / t + b_v) adds b_p times the key sums of S_t (one accumulate per v spike)
    and b_v times the row sums of R_t (one per p spike); with analog P, whose rows sum to 1, b_v is
    a constant output current. The result equals attention on the time averages of (spikes + shift).
    """
    def split(y: torch.Tensor) -> torch.Tensor:  # [T, B, heads, N, d]
        return y.unflatten(0, (timesteps, -1)).unflatten(-1, (heads, -1)).transpose(2, 3)

    q, k, v = split(q), split(k), split(v)
    q_shift = None if shifts is None else shifts[0].view(heads, 1, -1)
    sum_q, sum_k = torch.zeros_like(q[0]), torch.zeros_like(k[0])
    product = q.new_zeros(q.shape[1:-1] + (k.shape[-2],))
    key_bias = q.new_zeros(k.shape[1:-1])  # b_q . B_t per key, [B, heads, N]
    probabilities = []  # P_t
    for step in range(timesteps):
        t = step + 1
        sum_k = sum_k + k[step]
        product = product + q[step] @ sum_k.transpose(-1, -2) + sum_q @ k[step].transpose(-1, -2)
        sum_q = sum_q + q[step]
        scores = product * (scale / t ** 2)
        if q_shift is not None:
            key_bias = key_bias + (k[step] * q_shift).sum(dim=-1)
            scores = scores + (key_bias * (scale / t)).unsqueeze(-2)
        probabilities.append(torch.softmax(scores, dim=-1))
    if probability_site is not None:
        probabilities = _spiking_probabilities(torch.stack(probabilities), probability_site, shifts is not None)
    v_shift = None if shifts is None else shifts[2].view(heads, 1, -1)
    sum_v = torch.zeros_like(v[0])
    previous, outputs = 0.0, []
    for step in range(timesteps):
        t = step + 1
        sum_v = sum_v + v[step]
        mean_v = sum_v / t if v_shift is None else sum_v / t + v_shift
        cumulative = (probabilities[step] @ mean_v) * t  # the output's running sum
        outputs.append(cumulative - previous)
        previous = cumulative
    return torch.stack(outputs).transpose(2, 3).flatten(3).flatten(0, 1)


def _spiking_probabilities(probabilities: torch.Tensor, site: SpikingActivation, fold: bool) -> torch.Tensor:
    """The running means R_t / t (+ b_p where folded) of P's spikes, for P_t [T, B, heads, N, N]."""
    steps = probabilities.shape[0]
    accumulated = probabilities * torch.arange(1, steps + 1, dtype=probabilities.dtype,
                                               device=probabilities.device).view(-1, 1, 1, 1, 1)
    increments = torch.cat([accumulated[:1], accumulated[1:] - accumulated[:-1]])
    spikes = site(increments.flatten(0, 1)).unflatten(0, (steps, -1))
    means = spikes.cumsum(dim=0) / torch.arange(1, steps + 1, dtype=spikes.dtype,
                                                device=spikes.device).view(-1, 1, 1, 1, 1)
    return means + site.output_shift.view(-1, 1, 1) if fold else means


class SpikeDrivenAttention(TimeFolded):
    """Spatial self-attention with spike-driven projections ("residual") and products ("full").

    The attention GroupNorm runs on the running mean of the residual stream (its increments feed
    the input site, so that site's running mean is exactly GroupNorm of the stream's mean); the
    site's spikes drive to_q, to_k, to_v. "residual": softmax attention on the running means of
    q, k, v, analog. "full": sites on q, k, v and the probabilities, `spiking_attention`, and a site
    on the attention output so to_out is spike-driven too. The residual connection adds the stream itself.
    In closed form (one time average per input) the same code runs with T = 1: the sites are their
    twins and every product is evaluated once on the averages.
    """

    def __init__(self, attention: nn.Module, timesteps: int, input_site: SpikingActivation,
                 product_sites: dict[str, SpikingActivation] | None = None) -> None:
        super().__init__()
        self.attention = attention
        self.timesteps = timesteps
        self.input_site = input_site
        for name in ("to_q", "to_k", "to_v"):
            setattr(attention, name, fold(getattr(attention, name), input_site))
        self.product_sites = nn.ModuleDict(product_sites or {})
        if product_sites:
            attention.to_out[0] = fold(attention.to_out[0], product_sites["out"])

    @property
    def level(self) -> str:
        return "full" if len(self.product_sites) else "residual"

    def _analog_mix(self, qkv: torch.Tensor) -> torch.Tensor:
        """Softmax attention of (running means of) q, k, v concatenated on the last dim."""
        heads = self.attention.heads
        q, k, v = (y.unflatten(2, (heads, -1)).transpose(1, 2) for y in qkv.chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        attn, steps = self.attention, self.folded_steps
        height, width = hidden_states.shape[2], hidden_states.shape[3]
        tokens = hidden_states.flatten(2)  # [TB, C, HW]
        if attn.group_norm is not None:
            tokens = expectation_increments(attn.group_norm, tokens, steps)
        spikes = self.input_site(tokens.contiguous()).transpose(1, 2)  # [TB, HW, C]
        q, k, v = attn.to_q(spikes), attn.to_k(spikes), attn.to_v(spikes)
        if self.level == "full":
            sites = self.product_sites
            q, k, v = (_channels_first_site(sites[name], y) for name, y in (("q", q), ("k", k), ("v", v)))
            shifts = tuple(sites[name].output_shift for name in ("q", "k", "v"))
            mixed = spiking_attention(q, k, v, attn.heads, steps, attn.scale, sites["p"] if "p" in sites else None,
                                      shifts)
            mixed = _channels_first_site(sites["out"], mixed)
        else:
            mixed = expectation_increments(self._analog_mix, torch.cat([q, k, v], dim=-1), steps)
        out = attn.to_out[1](attn.to_out[0](mixed)).transpose(1, 2).unflatten(2, (height, width))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

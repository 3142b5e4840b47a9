"""Unit costs of the energy model and the fan-out of a convolution.

45 nm figures of Horowitz (ISSCC 2014, "Computing's energy problem"): 32-bit float mult 3.7 pJ,
add 0.9 pJ (a float MAC 4.6 pJ, an accumulate 0.9 pJ: the SDM papers' convention); 8-bit int mult
0.2 pJ, add 0.03 pJ; 32-bit int mult 3.1 pJ, add 0.1 pJ. Other integer widths scale as the
hardware does: a multiplier's energy with the product of its operand widths (0.2 pJ x a*b/64,
3.2 pJ at 32x32 against the measured 3.1), an adder's linearly with its width (0.03 pJ x bits/8).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

HOROWITZ_PJ = {"fp32_mult": 3.7, "fp32_add": 0.9, "int8_mult": 0.2, "int8_add": 0.03, "int32_mult": 3.1,
               "int32_add": 0.1}
PJ_PER_MAC = HOROWITZ_PJ["fp32_mult"] + HOROWITZ_PJ["fp32_add"]
PJ_PER_AC = HOROWITZ_PJ["fp32_add"]
WEIGHT_BITS, ACCUMULATOR_BITS = 8, 32
# (float adds, float mults) per element; exp, division and reciprocal square root count as one mult.
ELEMENTWISE = {
    "group_norm": (4, 2),  # statistics: x and x^2 summed; normalise: subtract, scale, shift
    "frozen_norm": (1, 1),  # a per-channel affine map (statistics frozen from calibration)
    "silu": (1, 3),  # exp, 1 + e, division, product
    "softmax": (2, 2),  # max-subtract, exp, sum, normalise (per attention score)
    "residual_add": (1, 0),
    "timestep_bias": (1, 0),  # the projected timestep embedding added to conv1's output
    "running_mean": (1, 1),  # cumulative sum, times 1/t
    "compensation": (1, 1),  # t * g(m_t) minus its previous value
    "clamp": (2, 0),  # to [-theta_neg, theta_pos]
    "neuron_signed": (3, 0),  # charge, two threshold tests
    "neuron_unsigned": (2, 0),  # charge, one threshold test
    "neuron_reset": (1, 0),  # per spike: subtract the emitted value
    "decode": (1, 0),  # output's time average, per output element and step
    "score_scale": (0, 1),  # A_t B_t^T / t^2 (+ key bias) per score, full attention
    "probability_change": (1, 0),  # P_t - P_{t-1} per score, full attention with analog P
    "attention_output": (4, 2),  # full attention with spiking P, per output element: R_t S_t / t, shift terms, increment
}


def int_mult_pj(bits_a: int, bits_b: int) -> float:
    return HOROWITZ_PJ["int8_mult"] * bits_a * bits_b / 64.0


def int_add_pj(bits: int) -> float:
    return HOROWITZ_PJ["int8_add"] * bits / 8.0


def elementwise_pj(name: str) -> float:
    adds, mults = ELEMENTWISE[name]
    return adds * HOROWITZ_PJ["fp32_add"] + mults * HOROWITZ_PJ["fp32_mult"]


def fan_out(conv: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    """[H, W]: how many output positions each input position of `conv` reaches (borders included).

    The transposed convolution of an all-ones output map with an all-ones kernel: each input
    position collects one per (output position, tap) pair that reads it. Explicit zero padding
    before the conv (Downsample2D) is inside H, W and never carries spikes.
    """
    out_h = (height + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    covered_h = (out_h - 1) * conv.stride[0] - 2 * conv.padding[0] + conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    covered_w = (out_w - 1) * conv.stride[1] - 2 * conv.padding[1] + conv.dilation[1] * (conv.kernel_size[1] - 1) + 1
    ones = torch.ones(1, 1, out_h, out_w, dtype=torch.float64)
    # output_padding: the last rows/columns the stride leaves over (reached by no tap, or by the taps of the
    # cropped padding side) so the map has the input's size
    return F.conv_transpose2d(ones, torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64), stride=conv.stride,
                              padding=conv.padding, output_padding=(height - covered_h, width - covered_w),
                              dilation=conv.dilation)[0, 0]


def payload_bits(units: torch.Tensor) -> torch.Tensor:
    """Bits a graded spike of `units` (>= 1) carries: ceil(log2(units + 1))."""
    return torch.ceil(torch.log2(units + 1))


def event_pj(units: torch.Tensor) -> torch.Tensor:
    """Synaptic cost per target of a spike event of `units` units with 8-bit weights and a 32-bit
    accumulator: a binary spike (1 unit) is one accumulate; a graded one a multiply of its payload
    bits by the weight, then the accumulate; no event costs nothing."""
    graded = int_mult_pj(1, WEIGHT_BITS) * payload_bits(units) + int_add_pj(ACCUMULATOR_BITS)
    cost = torch.where(units > 1, graded, torch.full_like(units, int_add_pj(ACCUMULATOR_BITS)))
    return torch.where(units > 0, cost, torch.zeros_like(units))

"""Thresholds for each site's neurons, chosen from the calibration record.

A T-step soft-reset IF neuron whose membrane starts at f * theta emits, for a steady input y,
n = clip(floor(y T / theta + f), 0, T) spikes: its output theta * n / T is a T-level quantiser
of y clipped at theta. Methods:
- max: theta = largest value seen (no clipping error, coarsest steps);
- percentile: theta = the p-th percentile (clips the rare tail);
- mse: theta minimising the expected squared error between the ANN activation and what the
  T-step neuron can emit, searched on a grid of candidates (the optimum depends on T).
Signed neurons quantise the negative part with their own threshold the same way. With bias
correction the remaining mean error per channel is returned as a constant current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sdm.calibration.record import CalibrationError, CalibrationRecord, SiteStats
from sdm.calibration.sites import activation_function

MIN_THRESHOLD = 1e-4
MSE_CANDIDATES = 16
MSE_ROUNDS = 3


@dataclass
class SiteThresholds:
    """Per-channel positive and negative thresholds and the bias-correction current."""

    pos: torch.Tensor
    neg: torch.Tensor
    shift: torch.Tensor


def neuron_quantise(y: torch.Tensor, theta: torch.Tensor, timesteps: int, membrane_init: float) -> torch.Tensor:
    """What a T-step IF neuron emits (time-averaged) for a steady non-negative input y."""
    theta = theta.clamp_min(MIN_THRESHOLD)
    count = torch.floor(y * timesteps / theta + membrane_init).clamp(0, timesteps)
    return count * theta / timesteps


def _pick(values: torch.Tensor, method: str, percentile: float, timesteps: int, membrane_init: float, target: torch.Tensor) -> torch.Tensor:
    """Threshold per row of `values` ([R, N] non-negative samples) by `method`."""
    top = values.max(dim=1).values
    if method == "max":
        return top.clamp_min(MIN_THRESHOLD)
    if method == "percentile":
        return torch.quantile(values, percentile / 100.0, dim=1).clamp_min(MIN_THRESHOLD)
    return mse_search(lambda theta: neuron_quantise(values[:, None, :], theta, timesteps, membrane_init), target, top)


def mse_search(emit: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Per row, the threshold in (0, top] minimising mean (emit(theta) - target)^2.

    `emit` maps candidates [R, K, 1] to what the neurons would emit, [R, K, N]; the search is a
    coarse-to-fine grid, each round zooming on the best cell of the previous one.
    """
    low, high = torch.zeros_like(top), top.clamp_min(MIN_THRESHOLD)
    for _ in range(MSE_ROUNDS):
        fractions = torch.linspace(0.0, 1.0, MSE_CANDIDATES + 2)[1:-1]
        candidates = (low[:, None] + (high - low)[:, None] * fractions[None, :]).clamp_min(MIN_THRESHOLD)
        error = (emit(candidates[:, :, None]) - target[:, None, :]).pow(2).mean(dim=2)  # [R, K]
        best = candidates.gather(1, error.argmin(dim=1, keepdim=True)).squeeze(1)
        step = (high - low) / (MSE_CANDIDATES + 1)
        low, high = (best - step).clamp_min(0), best + step
    return best


def site_thresholds(
    stats: SiteStats,
    timesteps: int,
    method: str = "mse",
    percentile: float = 99.9,
    granularity: str = "channel",
    signed: bool = True,
    membrane_init: float = 0.5,
    bias_correction: bool = True,
) -> SiteThresholds:
    """Thresholds for one site; `signed=False` means plain IF neurons acting as a ReLU proxy."""
    z = stats.z_quantiles.float()
    target = activation_function(stats.activation)(z)  # what the ANN emits at each sketch point
    channels = z.shape[0]
    driven = target if signed else z  # a plain IF neuron integrates z and rectifies it itself
    pos_values, neg_values = driven.clamp_min(0), (-driven).clamp_min(0)
    if granularity == "layer":
        pos_values, neg_values = pos_values.reshape(1, -1), neg_values.reshape(1, -1)
    pos_target = target.clamp_min(0).reshape(pos_values.shape)
    neg_target = (-target).clamp_min(0).reshape(neg_values.shape)
    pos = _pick(pos_values, method, percentile, timesteps, membrane_init, pos_target if signed else target.reshape(pos_values.shape))
    neg = _pick(neg_values, method, percentile, timesteps, membrane_init, neg_target) if signed else torch.ones_like(pos)
    pos, neg = pos.expand(channels).clone(), neg.expand(channels).clone()
    emitted = neuron_quantise(driven.clamp_min(0), pos[:, None], timesteps, membrane_init)
    if signed:
        emitted = emitted - neuron_quantise((-driven).clamp_min(0), neg[:, None], timesteps, membrane_init)
    shift = (target - emitted).mean(dim=1) if bias_correction else torch.zeros(channels)
    return SiteThresholds(pos=pos, neg=neg, shift=shift)


def input_stats(record: CalibrationRecord, quantiles: int = 257) -> SiteStats:
    """Per-channel statistics of the UNet inputs x_t themselves (for spike-encoded inputs)."""
    if record.inputs is None:
        raise CalibrationError("calibration record holds no inputs to choose input-encoding thresholds from")
    x = record.inputs.transpose(0, 1).reshape(record.inputs.shape[1], -1).float()
    sketch = torch.quantile(x, torch.linspace(0, 1, quantiles), dim=1).T.contiguous()
    return SiteStats(z_quantiles=sketch, group_mean=torch.zeros(1), group_var=torch.ones(1), activation="identity")

"""Thresholds for each site's neurons, chosen from the calibration record.

A site's exact neuron emits, for a time-averaged target y, n = clip(floor(y T / theta + f), 0, T)
spikes (sdm.core.quantise.side_count, the very function the neuron and the closed-form twin
use; signed sites first clip y at theta in the dendrite): its output theta * n / T is a T-level
quantiser of y clipped at theta. `site_quantise` models a whole site (ON side with theta_pos,
OFF side with theta_neg) exactly as the neuron realises it. Methods:
- max: theta = largest value seen (no clipping error, coarsest steps);
- percentile: theta = the p-th percentile (clips the rare tail);
- mse: theta minimising the expected squared error between the ANN activation and what the
  T-step neuron can emit, searched on a grid of candidates (the optimum depends on T).
Signed neurons quantise the negative part with their own threshold the same way. With bias
correction the remaining mean error per channel is returned as a constant current.

Granularity: one threshold per channel and side ("channel"), one per layer and side ("layer"), or
"auto": per channel for a site's side only where that lowers the side's squared error on the
calibration sketch to at most AUTO_GAIN times the layer clip's, else the layer clip (per-channel
clips fitted to a few calibration trajectories are tight, and inputs that drift past them clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.quantise import side_count
from .record import CalibrationRecord, SiteStats
from .settings import CalibrationError
from .sites import activation_function

MIN_THRESHOLD = 1e-4
MSE_CANDIDATES = 16
MSE_ROUNDS = 3
AUTO_GAIN = 0.5


@dataclass
class SiteThresholds:
    """Per-channel positive and negative thresholds and the bias-correction current."""

    pos: torch.Tensor
    neg: torch.Tensor
    shift: torch.Tensor


def neuron_quantise(y: torch.Tensor, theta: torch.Tensor, timesteps: int, membrane_init: float,
                    clip: bool = False) -> torch.Tensor:
    """What one side of a T-step neuron emits (time-averaged) for a time-averaged target y >= 0;
    `clip`: the dendrite clips y at theta first (signed sites)."""
    theta = theta.clamp_min(MIN_THRESHOLD)
    if clip:
        y = torch.minimum(y, theta)
    return side_count(y * timesteps, theta, timesteps, membrane_init) * theta / timesteps


def site_quantise(y: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, timesteps: int, membrane_init: float,
                  signed: bool) -> torch.Tensor:
    """A site's time-averaged output (shift excluded) for targets y: what its exact neuron emits."""
    out = neuron_quantise(y.clamp_min(0), pos, timesteps, membrane_init, clip=signed)
    if signed:
        out = out - neuron_quantise((-y).clamp_min(0), neg, timesteps, membrane_init, clip=True)
    return out


def _pick(values: torch.Tensor, method: str, percentile: float, timesteps: int, membrane_init: float,
          target: torch.Tensor, clip: bool) -> torch.Tensor:
    """Threshold per row of `values` ([R, N] non-negative samples) by `method`."""
    top = values.max(dim=1).values
    if method == "max":
        return top.clamp_min(MIN_THRESHOLD)
    if method == "percentile":
        return torch.quantile(values, percentile / 100.0, dim=1).clamp_min(MIN_THRESHOLD)
    return mse_search(lambda theta: neuron_quantise(values[:, None, :], theta, timesteps, membrane_init, clip),
                      target, top)


def _side(values: torch.Tensor, target: torch.Tensor, granularity: str, method: str, percentile: float,
          timesteps: int, membrane_init: float, clip: bool) -> torch.Tensor:
    """Per-channel thresholds [C] of one side for non-negative `values` and `target` [C, N]."""
    channels = values.shape[0]
    options = (method, percentile, timesteps, membrane_init)
    layer = _pick(values.reshape(1, -1), *options, target.reshape(1, -1), clip).expand(channels)
    if granularity == "layer":
        return layer.clone()
    channel = _pick(values, *options, target, clip)
    if granularity == "channel":
        return channel

    def error(theta: torch.Tensor) -> float:
        return float((neuron_quantise(values, theta[:, None], timesteps, membrane_init, clip) - target).pow(2).sum())

    return channel if error(channel) <= AUTO_GAIN * error(layer) else layer.clone()


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
    neg_scale: float = 1.0,
) -> SiteThresholds:
    """Thresholds for one site; `signed=False` means plain IF neurons acting as a ReLU proxy.

    `neg_scale` multiplies the chosen negative thresholds (energy-aware OFF sides: a coarser
    negative lobe emits fewer spikes); the bias correction is that of the scaled thresholds."""
    z = stats.z_quantiles.float()
    target = activation_function(stats.activation)(z)  # what the ANN emits at each sketch point
    channels = z.shape[0]
    driven = target if signed else z  # a plain IF neuron integrates z and rectifies it itself
    options = (granularity, method, percentile, timesteps, membrane_init)
    pos = _side(driven.clamp_min(0), target.clamp_min(0) if signed else target, *options, clip=signed)
    neg = _side((-driven).clamp_min(0), (-target).clamp_min(0), *options, clip=True) * neg_scale if signed \
        else torch.ones(channels)
    emitted = site_quantise(driven, pos[:, None], neg[:, None], timesteps, membrane_init, signed)
    shift = (target - emitted).mean(dim=1) if bias_correction else torch.zeros(channels)
    return SiteThresholds(pos=pos, neg=neg, shift=shift)


def input_stats(record: CalibrationRecord, quantiles: int = 257) -> SiteStats:
    """Per-channel statistics of the UNet inputs x_t themselves (for spike-encoded inputs)."""
    if record.inputs is None:
        raise CalibrationError("calibration record holds no inputs to choose input-encoding thresholds from")
    x = record.inputs.transpose(0, 1).reshape(record.inputs.shape[1], -1).float()
    sketch = torch.quantile(x, torch.linspace(0, 1, quantiles), dim=1).T.contiguous()
    return SiteStats(z_quantiles=sketch, group_mean=torch.zeros(1), group_var=torch.ones(1), activation="identity")

"""The T-level quantiser of a spiking site: one definition for neurons, twin and calibration.

A side of a site (ON for the positive part, OFF for the negative part) with threshold theta and
membrane start f has emitted, once its cumulative drive is D >= 0,

    count(D) = clip(floor(D / theta + f), 0, T)

spikes of weight theta. After T steps D = T * y for a time-averaged target y, so the site's
output is theta * count / T: a uniform quantiser of y with T levels, clipped at theta, that
rounds to nearest for f = 0.5. The exact neuron (converter/neurons.py), the closed-form twin and
the calibration's threshold search (calibration/thresholds.py) all call `side_count`, with the
same float operations in the same order, so what calibration optimises is what the neuron does.

Under autograd the floor is a straight-through estimator (its gradient taken as 1) and the clip
passes no gradient outside [0, T]: the value theta * count / T then has LSQ's step-size gradient
(count - D / theta inside the range, T at the top), so thresholds can be learned.
"""

from __future__ import annotations

import torch


def side_count(cumulative: torch.Tensor, theta: torch.Tensor, timesteps: int, membrane_init: float) -> torch.Tensor:
    """Spikes emitted (as float integers) by one side for a cumulative drive `cumulative` >= 0."""
    u = cumulative / theta + membrane_init
    if u.requires_grad:
        # floor(u) - u is exact in float for u >= 0 (and the clip removes u < 0), so the
        # forward value is floor(u) bit for bit.
        return (u + (torch.floor(u) - u).detach()).clamp(0, timesteps)
    return u.floor_().clamp_(0, timesteps)


def signed_counts(cumulative: torch.Tensor, theta_pos: torch.Tensor, theta_neg: torch.Tensor, timesteps: int,
                  membrane_init: float, signed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ON count, OFF count or None): the positive part of `cumulative` quantised with theta_pos,
    the negative part with theta_neg (only for signed sites; unsigned ones rectify)."""
    on = side_count(cumulative.clamp_min(0), theta_pos, timesteps, membrane_init)
    if not signed:
        return on, None
    return on, side_count((-cumulative).clamp_min(0), theta_neg, timesteps, membrane_init)

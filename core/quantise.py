"""The T-level quantiser of a spiking site: one definition for neurons, twin and calibration.

A side of a site (ON for the positive part, OFF for the negative part) with threshold theta and
membrane start f has emitted, once its cumulative drive is D >= 0,

    count(D) = clip(floor(D / theta + f), 0, T)

spikes of weight theta. After T steps D = T * y for a time-averaged target y, so the site's
output is theta * count / T: a uniform quantiser of y with T levels, clipped at theta, that
rounds to nearest for f = 0.5. The exact neuron (converter/spiking/neurons.py), the closed-form twin and
the calibration's threshold search (calibration/thresholds.py) all call `side_count`, with the
same float operations in the same order, so what calibration optimises is what the neuron does.

Under autograd the floor is a straight-through estimator (its gradient taken as 1) applied after
clipping D / theta to [0, T], as LSQ does: the value theta * count / T then has LSQ's step-size
gradient (count - D / theta inside the range, T at the top, in units of the step theta / T), so
thresholds can be learned (converter/finetune/qat.py).
"""

from __future__ import annotations

import torch


def side_count(cumulative: torch.Tensor, theta: torch.Tensor, timesteps: int, membrane_init: float) -> torch.Tensor:
    """Spikes emitted (as float integers) by one side for a cumulative drive `cumulative` >= 0."""
    ratio = cumulative / theta
    if ratio.requires_grad:
        # LSQ's order: clip D / theta to [0, T] first, then round (floor(. + f), f in [0, 1) by
        # the policy) with a straight-through gradient, and no clip after it. Inside the clip u is
        # the same float as below (floor(u) - u is exact for u >= 0); beyond it floor(T + f) = T:
        # the forward value is the quantiser's bit for bit. The gradient is LSQ's: inside [0, T]
        # d count / d D = 1 / theta and d (theta * count) / d theta = count - D / theta; beyond it
        # 0 and T. (A clip after the floor, as before, passed no gradient where the count is 0 or
        # T, since torch's clamp has none at its bounds: D / theta in [0, 1 - f) and [T - f, T].)
        u = ratio.clamp(0, timesteps) + membrane_init
        return u + (torch.floor(u) - u).detach()
    return ratio.add_(membrane_init).floor_().clamp_(0, timesteps)


def signed_counts(cumulative: torch.Tensor, theta_pos: torch.Tensor, theta_neg: torch.Tensor, timesteps: int,
                  membrane_init: float, signed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ON count, OFF count or None): the positive part of `cumulative` quantised with theta_pos,
    the negative part with theta_neg (only for signed sites; unsigned ones rectify)."""
    on = side_count(cumulative.clamp_min(0), theta_pos, timesteps, membrane_init)
    if not signed:
        return on, None
    return on, side_count((-cumulative).clamp_min(0), theta_neg, timesteps, membrane_init)

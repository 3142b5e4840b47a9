"""The T-level quantiser: its straight-through gradient is LSQ's, its forward value is the same
with and without autograd."""

import torch
from sdm.core.quantise import side_count


def lsq_step_gradient(x: float, levels: int) -> float:
    """LSQ (Esser et al. 2020): d x_hat / d s = round(x/s) - x/s inside [0, Q_p], Q_p above."""
    return round(x) - x if x < levels else float(levels)


def test_gradients_are_lsq_inside_and_beyond_the_clip():
    T, theta = 4, 2.0
    for x in [0.2, 0.7, 1.3, 2.5001, 3.4, 3.7, 3.95, 4.3, 6.0]:  # x / s in steps s = theta / T; the bands next to 0 and T included
        drive = torch.tensor(x * theta, dtype=torch.float64, requires_grad=True)  # D = T * y with y = x * s
        step = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        level = step * side_count(drive, step, T, 0.5) / T
        d_theta, d_drive = torch.autograd.grad(level, [step, drive])
        assert abs(float(d_theta) * T - lsq_step_gradient(x, T)) < 1e-9, x  # d level / d s, s = theta / T
        assert float(d_drive) * T == (1.0 if x < T else 0.0), x  # d level / d y


def test_forward_value_is_the_same_with_autograd():
    generator = torch.Generator().manual_seed(0)
    drive = torch.rand(1000, generator=generator) * 12
    theta = torch.rand(1000, generator=generator) + 0.5
    for f in (0.0, 0.5, 0.9):
        plain = side_count(drive, theta, 4, f)
        traced = side_count(drive, theta.clone().requires_grad_(True), 4, f)
        assert torch.equal(plain, traced.detach()) and plain.max() == 4 and plain.min() == 0

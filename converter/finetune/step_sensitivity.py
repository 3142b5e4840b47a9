"""How much the SNN's eps error at each sampling step costs the final sample.

Measured on the reference model (T = 4, DDIM 20): the SNN's eps MSE is about the same at every
step but 20x larger at t = 0, while the damage one step's error does to the final sample falls
by four orders of magnitude from the first steps (t >= 700) to the last. A distillation loss that
weights every step alike therefore spends most of its gradient where it does not matter (mostly
on t = 0). This module measures, per step s of a sampler's trajectory, the final-sample MSE when
the SNN replaces the ANN at step s only (the ANN everywhere else, from the same noises), and the
SNN's eps MSE there; their ratio, the step's *gain*, turns eps MSE into final-sample MSE, so
sampling distillation inputs with probability proportional to the gain of their timestep trains
on an unbiased estimate of the final-sample error (to first order, steps taken one at a time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core.diffusion import EpsFunction, run_trajectory, trajectory_length

MIN_GAIN_FRACTION = 1e-3  # of the largest gain: no step is never sampled (its error could grow unseen)


@dataclass(frozen=True)
class StepSensitivity:
    """Per sampling step (in trajectory order): the timestep, the SNN's eps MSE there, and the
    final-sample MSE when only that step uses the SNN."""

    timesteps: list[int]
    eps_mse: list[float]
    final_mse: list[float]

    @property
    def gains(self) -> list[float]:
        """Final-sample MSE per unit eps MSE at each step."""
        return [final / max(eps, 1e-30) for final, eps in zip(self.final_mse, self.eps_mse)]

    def weights_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Sampling weights for inputs at `timesteps` (float64, > 0): the gain of their step,
        interpolated in t for timesteps the trajectory does not visit, floored at
        MIN_GAIN_FRACTION of the largest gain."""
        order = np.argsort(self.timesteps)
        t = np.asarray(self.timesteps, dtype=np.float64)[order]
        gains = np.asarray(self.gains, dtype=np.float64)[order]
        gains = np.maximum(gains, MIN_GAIN_FRACTION * gains.max())
        return torch.from_numpy(np.interp(timesteps.double().cpu().numpy(), t, gains))

    def to_json(self) -> dict:
        return {**asdict(self), "gains": self.gains}

    @classmethod
    def from_json(cls, data: dict) -> "StepSensitivity":
        return cls(list(data["timesteps"]), list(data["eps_mse"]), list(data["final_mse"]))


@torch.no_grad()
def measure_step_sensitivity(snn: EpsFunction, ann: EpsFunction, noise: torch.Tensor, sampler: str,
                             scheduler_config: dict, steps: int) -> StepSensitivity:
    """One ANN trajectory from `noise`, then one trajectory per step s with the SNN at s only.
    Deterministic samplers only (the ANN's steps before s are replayed from the first run)."""
    length = trajectory_length(sampler, scheduler_config, steps)
    reference: list[torch.Tensor] = []
    timesteps: list[int] = []

    def record(step: int, t: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> None:
        reference.append(eps)
        timesteps.append(int(t))

    progress = tqdm(total=length + 1, desc="step sensitivity", unit="trajectory")
    final = run_trajectory(ann, noise, sampler, scheduler_config, steps, observe=record).clamp(-1, 1)
    progress.update()
    eps_mse, final_mse = [], []
    for swapped in range(length):
        calls = iter(range(length))

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            step = next(calls)
            if step < swapped:
                return reference[step]
            if step == swapped:
                out = snn(x, t)
                eps_mse.append(float((out.float() - reference[step].float()).square().mean()))
                return out
            return ann(x, t)

        sample = run_trajectory(eps, noise, sampler, scheduler_config, steps).clamp(-1, 1)
        final_mse.append(float((sample.float() - final.float()).square().mean()))
        progress.update()
    progress.close()
    return StepSensitivity(timesteps, eps_mse, final_mse)

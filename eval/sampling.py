"""Paired sampling: the ANN and the SNN start from the same noises and use the same sampler.

Each model runs its own trajectory (core/diffusion.run_trajectory: a fresh scheduler per batch,
since multistep solvers keep history, and a seeded generator for stochastic samplers), so the
pair differs only by the UNet. Along the SNN's trajectory the ANN is also evaluated on the very
same x_t: the per-step error of the predicted noise then measures the UNet alone, not the drift
of two trajectories.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sdm.core.diffusion import EpsFunction, run_trajectory, trajectory_length


@dataclass
class Trajectory:
    """Final samples in [-1, 1] and, when a reference UNet was given, per-step eps errors."""

    samples: torch.Tensor
    eps_rel_l2: list[float] = field(default_factory=list)
    eps_cosine: list[float] = field(default_factory=list)
    unet_seconds: float = 0.0
    unet_calls: int = 0


@torch.no_grad()
def run_sampler(
    unet: EpsFunction,
    noise: torch.Tensor,
    sampler: str,
    scheduler_config: dict,
    steps: int,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    reference: EpsFunction | None = None,
    desc: str = "sampling",
) -> Trajectory:
    """Sample from `noise` with `unet`; with `reference`, measure eps error at every step."""
    chunks = noise.split(batch_size)
    num_steps = trajectory_length(sampler, scheduler_config, steps)
    progress = tqdm(total=len(chunks) * num_steps, desc=desc, unit="step")
    outputs, rel_sums, cos_sums = [], torch.zeros(num_steps), torch.zeros(num_steps)
    clock = {"seconds": 0.0, "calls": 0}

    def timed(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        eps = unet(model_input, t)
        clock["seconds"] += time.perf_counter() - start
        clock["calls"] += 1
        return eps

    def observe(step: int, t: torch.Tensor, model_input: torch.Tensor, eps: torch.Tensor) -> None:
        if reference is not None:
            ref = reference(model_input, t).flatten(1)
            got = eps.flatten(1)
            rel_sums[step] += ((got - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).sum().cpu()
            cos_sums[step] += torch.nn.functional.cosine_similarity(got, ref, dim=1).sum().cpu()
        progress.update()

    for index, chunk in enumerate(chunks):
        generator = torch.Generator(device="cpu").manual_seed(seed * 1000003 + index)
        x = run_trajectory(timed, chunk.to(device), sampler, scheduler_config, steps, generator, observe)
        outputs.append(x.clamp(-1, 1).cpu())
    progress.close()
    count = noise.shape[0]
    trajectory = Trajectory(samples=torch.cat(outputs), unet_seconds=clock["seconds"], unet_calls=clock["calls"])
    if reference is not None:
        trajectory.eps_rel_l2 = (rel_sums / count).tolist()
        trajectory.eps_cosine = (cos_sums / count).tolist()
    return trajectory

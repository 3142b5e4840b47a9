"""Paired sampling: the ANN and the SNN start from the same noises and use the same sampler.

Each model runs its own trajectory with a fresh scheduler per batch (multistep solvers keep
history) and a seeded generator for stochastic samplers, so the pair differs only by the UNet.
Along the SNN's trajectory the ANN is also evaluated on the very same x_t: the per-step error
of the predicted noise then measures the UNet alone, not the drift of two trajectories.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from sdm.core.errors import SdmError

SAMPLERS = ("ddim", "ddpm", "dpm")
UNet = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def add_sampling_arguments(parser: argparse.ArgumentParser, *, num_samples: int, steps: int, batch_size: int) -> None:
    """The sampling options every evaluation command shares, with that command's defaults."""
    parser.add_argument("--num-samples", type=int, default=num_samples, help=f"images per model (default {num_samples})")
    parser.add_argument("--steps", type=int, default=steps, help=f"sampler steps (default {steps})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddim (eta 0, default), ddpm, dpm (DPM-Solver++)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default {batch_size})")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")


def make_sampler(name: str, scheduler_config: dict, steps: int):
    """A diffusers scheduler by short name, set to `steps` inference steps."""
    if name == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler_config)
    elif name == "ddpm":
        scheduler = DDPMScheduler.from_config(scheduler_config)
    elif name == "dpm":
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++")
    else:
        raise SdmError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    scheduler.set_timesteps(steps)
    return scheduler


def initial_noise(num_samples: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The seeded starting noises shared by every model of a comparison."""
    if num_samples < 1:
        raise SdmError(f"number of samples must be >= 1, got {num_samples}")
    return torch.randn((num_samples, *shape), generator=torch.Generator().manual_seed(seed))


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
    unet: UNet,
    noise: torch.Tensor,
    sampler: str,
    scheduler_config: dict,
    steps: int,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    reference: UNet | None = None,
    desc: str = "sampling",
) -> Trajectory:
    """Sample from `noise` with `unet`; with `reference`, measure eps error at every step."""
    chunks = noise.split(batch_size)
    num_steps = len(make_sampler(sampler, scheduler_config, steps).timesteps)
    progress = tqdm(total=len(chunks) * num_steps, desc=desc, unit="step")
    outputs, rel_sums, cos_sums = [], torch.zeros(num_steps), torch.zeros(num_steps)
    seconds, calls = 0.0, 0
    for index, chunk in enumerate(chunks):
        scheduler = make_sampler(sampler, scheduler_config, steps)
        generator = torch.Generator(device="cpu").manual_seed(seed * 1000003 + index)
        x = chunk.to(device) * scheduler.init_noise_sigma
        for step, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(x, t)
            start = time.perf_counter()
            eps = unet(model_input, t)
            seconds += time.perf_counter() - start
            calls += 1
            if reference is not None:
                ref = reference(model_input, t).flatten(1)
                got = eps.flatten(1)
                rel_sums[step] += ((got - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).sum().cpu()
                cos_sums[step] += torch.nn.functional.cosine_similarity(got, ref, dim=1).sum().cpu()
            kwargs = {"eta": 0.0} if sampler == "ddim" else {}
            if sampler == "ddpm":
                kwargs["generator"] = generator
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
            progress.update()
        outputs.append(x.clamp(-1, 1).cpu())
    progress.close()
    count = noise.shape[0]
    trajectory = Trajectory(samples=torch.cat(outputs), unet_seconds=seconds, unet_calls=calls)
    if reference is not None:
        trajectory.eps_rel_l2 = (rel_sums / count).tolist()
        trajectory.eps_cosine = (cos_sums / count).tolist()
    return trajectory


def as_eps_function(model: torch.nn.Module) -> UNet:
    """Adapt a diffusers-style model (`model(x, t).sample`) to the sampler's callable."""
    return lambda x, t: model(x, t).sample

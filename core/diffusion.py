"""The diffusion mechanics every stage shares: samplers, seeded noise, the trajectory loop,
forward noising q(x_t | x_0) and the training target.

Calibration (the ANN's own DDIM trajectories), fine-tuning (distillation inputs) and evaluation
(paired ANN-vs-SNN sampling) all walk a sampler's trajectory through `run_trajectory`, so a
trajectory means the same thing in every stage; both trainers and data calibration noise real
images through `forward_noising`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils.checkpoint
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from .errors import SdmError
from .settings import SAMPLERS

EpsFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepObserver = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


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


def as_eps_function(model: torch.nn.Module) -> EpsFunction:
    """Adapt a diffusers-style model (`model(x, t).sample`) to the trajectory's callable."""
    return lambda x, t: model(x, t).sample


def recomputed(eps: EpsFunction) -> EpsFunction:
    """`eps` under activation checkpointing: its activations are recomputed in the backward pass,
    so a differentiable trajectory holds one UNet pass's activations instead of one per step."""
    return lambda x, t: torch.utils.checkpoint.checkpoint(eps, x, t, use_reentrant=False)


def sample_shape(unet: torch.nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of one sample of a diffusers UNet (or anything with its config)."""
    config = unet.config
    return config.in_channels, config.sample_size, config.sample_size


def initial_noise(num_samples: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The seeded starting noises shared by every model of a comparison (and by calibration)."""
    if num_samples < 1:
        raise SdmError(f"number of samples must be >= 1, got {num_samples}")
    return torch.randn((num_samples, *shape), generator=torch.Generator().manual_seed(seed))


def run_trajectory(unet: EpsFunction, x: torch.Tensor, sampler: str, scheduler_config: dict, steps: int,
                   generator: torch.Generator | None = None, observe: StepObserver | None = None,
                   differentiable: bool = False) -> torch.Tensor:
    """Walk one batch from noise `x` to a sample; `observe(step, t, model_input, eps)` sees every step.

    A fresh scheduler per call (multistep solvers keep history); `generator` drives the
    stochastic DDPM sampler; DDIM runs with eta 0 (deterministic). `differentiable`: keep the
    autograd graph through every step (QAT's sample distillation back-propagates the final
    sample's error through the whole trajectory); otherwise no graph is built.
    """
    scheduler = make_sampler(sampler, scheduler_config, steps)
    with torch.set_grad_enabled(differentiable):
        x = x * scheduler.init_noise_sigma
        for step, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(x, t)
            eps = unet(model_input, t)
            if observe is not None:
                observe(step, t, model_input, eps)
            kwargs = {"eta": 0.0} if sampler == "ddim" else {}
            if sampler == "ddpm":
                kwargs["generator"] = generator
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def trajectory_length(sampler: str, scheduler_config: dict, steps: int) -> int:
    """How many UNet evaluations one trajectory takes (for progress bars and per-step tables)."""
    return len(make_sampler(sampler, scheduler_config, steps).timesteps)


def forward_noising(schedule: DDPMScheduler, x0: torch.Tensor, t: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t ~ q(x_t | x_0) at timesteps `t` with seeded noise; returns (x_t, noise)."""
    noise = torch.randn(x0.shape, generator=generator)
    return schedule.add_noise(x0, noise, t), noise


def training_example(schedule: DDPMScheduler, x0: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The diffusion training triple (x_t, t, target) at uniform random timesteps."""
    t = torch.randint(0, schedule.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    x_t, noise = forward_noising(schedule, x0, t, generator)
    return x_t, t, data_target(schedule, x0, noise, t)


def data_target(schedule: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under the scheduler's prediction type."""
    kind = schedule.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return schedule.get_velocity(x0, noise, t)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the [-1, 1] range diffusion models are trained on."""
    return images.float() / 127.5 - 1.0

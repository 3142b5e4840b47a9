"""Paired sampling: the ANN and the SNN start from the same noises and use the same sampler.

Each model runs its own trajectory with a fresh scheduler per batch (multistep solvers keep
history) and a seeded generator for stochastic samplers, so the pair differs only by the UNet.
Along the SNN's trajectory the ANN is also evaluated on the very same x_t: the per-step error
of the predicted noise then measures the UNet alone, not the drift of two trajectories.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from sdm.core.devices import DEVICE_HELP, CallTimer, tf32_mode
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
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default cpu)")
    parser.add_argument("--tf32", action="store_true",
                        help="let CUDA round float32 convolutions and matmuls through TF32 (default off: paired "
                             "comparisons want the same float32 arithmetic in ANN and SNN; the report records it)")


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
    """Final samples in [-1, 1] and, when a reference UNet was given, per-sample, per-step eps errors.

    `indices` are the global indices of the samples it holds (all of them unless sharded), so
    partial trajectories of several processes reassemble in order (eval/distributed.py).
    """

    samples: torch.Tensor
    indices: torch.Tensor | None = None
    eps_rel_l2_samples: torch.Tensor | None = None  # [samples, steps]
    eps_cosine_samples: torch.Tensor | None = None
    unet_seconds: float = 0.0
    unet_calls: int = 0

    @property
    def eps_rel_l2(self) -> list[float]:
        """Mean over samples of the relative L2 eps error, per sampler step ([] without reference)."""
        return _per_step_mean(self.eps_rel_l2_samples)

    @property
    def eps_cosine(self) -> list[float]:
        return _per_step_mean(self.eps_cosine_samples)


def _per_step_mean(values: torch.Tensor | None) -> list[float]:
    return [] if values is None else values.double().mean(dim=0).tolist()


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
    chunks: Sequence[int] | None = None,
    tf32: bool = False,
) -> Trajectory:
    """Sample from `noise` with `unet`; with `reference`, measure eps error at every step.

    The noise runs in batches of `batch_size` (`chunks`: only these batch indices, for a shard);
    a stochastic sampler's generator is keyed by the batch's global index, so a sample does not
    depend on which process runs its batch. UNet time is measured with device synchronisation
    (core.devices.CallTimer); TF32 stays off unless `tf32` (core.devices.set_tf32). Errors and
    counters stay on the device until the end: no host sync per step.
    """
    batches = noise.split(batch_size)
    chunks = list(range(len(batches))) if chunks is None else list(chunks)
    num_steps = len(make_sampler(sampler, scheduler_config, steps).timesteps)
    progress = tqdm(total=len(chunks) * num_steps, desc=desc, unit="step")
    outputs, rel, cos = [], [], []
    timer, calls = CallTimer(device), 0
    with tf32_mode(tf32):
        for index in chunks:
            scheduler = make_sampler(sampler, scheduler_config, steps)
            generator = torch.Generator(device="cpu").manual_seed(seed * 1000003 + index)
            x = batches[index].to(device) * scheduler.init_noise_sigma
            chunk_rel, chunk_cos = [], []
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(x, t)
                with timer():
                    eps = unet(model_input, t)
                calls += 1
                if reference is not None:
                    ref = reference(model_input, t).flatten(1)
                    got = eps.flatten(1)
                    chunk_rel.append((got - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12))
                    chunk_cos.append(torch.nn.functional.cosine_similarity(got, ref, dim=1))
                kwargs = {"eta": 0.0} if sampler == "ddim" else {}
                if sampler == "ddpm":
                    kwargs["generator"] = generator
                x = scheduler.step(eps, t, x, **kwargs).prev_sample
                progress.update()
            outputs.append(x.clamp(-1, 1).cpu())
            if reference is not None:
                rel.append(torch.stack(chunk_rel, dim=1).cpu())
                cos.append(torch.stack(chunk_cos, dim=1).cpu())
    progress.close()
    indices = torch.arange(len(noise)).split(batch_size)
    return Trajectory(samples=torch.cat(outputs) if outputs else noise[:0].cpu(),
                      indices=torch.cat([indices[k] for k in chunks]) if chunks else torch.zeros(0, dtype=torch.long),
                      eps_rel_l2_samples=_rows(rel, num_steps) if reference is not None else None,
                      eps_cosine_samples=_rows(cos, num_steps) if reference is not None else None,
                      unet_seconds=timer.seconds, unet_calls=calls)


def _rows(parts: list[torch.Tensor], columns: int) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, columns)


def as_eps_function(model: torch.nn.Module) -> UNet:
    """Adapt a diffusers-style model (`model(x, t).sample`) to the sampler's callable."""
    return lambda x, t: model(x, t).sample

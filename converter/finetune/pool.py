"""The inputs fine-tuning learns from: distillation x_t with the ANN's predictions, seeded noises
with the ANN's final samples, and real images.

The pool holds x_t the source ANN visits along its own DDIM trajectories (the calibration
record's stored inputs and/or fresh trajectories from seeded noise), with the ANN's targets
computed once up front on the CPU. The sample target (`--distill-target sample`) draws fresh
noises every step instead (`training_noises`: a function of seed and step, so a resumed run
draws the same ones) and the ANN's DDIM samples from them (`ann_samples`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...calibration.record import CalibrationRecord
from ...core.diffusion import as_eps_function, initial_noise, run_trajectory, sample_shape, trajectory_length
from ...core.image_data import ImageSource
from ...pretrained.loading import SourceModel
from ..spiking.model import SpikingUNet2DModel
from .settings import FinetuneError, FinetuneSettings
from .step_sensitivity import StepSensitivity, measure_step_sensitivity

TRAJECTORY_SEED_OFFSET = 1000  # fresh trajectories start away from the noise seeds evaluations use (0, 1, ...)
GENERATION_SEED_STRIDE = 7919  # generation g of fresh trajectories: seed 1000 + --seed + g * stride
HELD_OUT_SEED = 999  # QAT's fixed held-out distillation inputs: trajectories no generation trains on
NOISE_SEED_OFFSET = 100_000  # the sample target's training noises: seed 100000 + --seed * 1000003 + step
NOISE_SEED_STRIDE = 1_000_003
TARGET_CHUNK = 16


@dataclass
class Pool:
    """Distillation inputs x_t, their diffusion timesteps and the ANN's predictions on them (CPU)."""

    x: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    @classmethod
    def empty(cls) -> "Pool":
        return cls(torch.zeros(0), torch.zeros(0), torch.zeros(0))


@torch.no_grad()
def ann_targets(ann: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    outs = [ann(xc.to(device), tc.to(device)).sample.float().cpu() for xc, tc in zip(x.split(TARGET_CHUNK), t.split(TARGET_CHUNK))]
    return torch.cat(outs)


@torch.no_grad()
def ann_trajectories(source: SourceModel, count: int, steps: int, seed: int, device: torch.device) -> Pool:
    """x_t along the ANN's DDIM (eta 0) trajectories from seeded Gaussian noise, with eps on each."""
    noise = initial_noise(count, sample_shape(source.unet), seed)
    xs, ts, targets = [], [], []
    progress = tqdm(total=math.ceil(count / TARGET_CHUNK) * trajectory_length("ddim", source.scheduler_config, steps),
                    desc="ANN trajectories", unit="eval")

    def observe(step: int, t: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> None:
        xs.append(x.cpu())
        ts.append(torch.full((x.shape[0],), int(t), dtype=torch.long))
        targets.append(eps.float().cpu())
        progress.update()

    for chunk in noise.split(TARGET_CHUNK):
        run_trajectory(as_eps_function(source.unet), chunk.to(device), "ddim", source.scheduler_config, steps,
                       observe=observe)
    progress.close()
    return Pool(torch.cat(xs), torch.cat(ts), torch.cat(targets))


def build_pool(settings: FinetuneSettings, source: SourceModel, record: CalibrationRecord | None,
               device: torch.device) -> Pool:
    parts = []
    if settings.pool in ("record", "both"):
        if record is None or record.inputs is None:
            raise FinetuneError(f"{settings.snn} has no calibration inputs stored in its record; use --pool trajectories")
        x, t = record.inputs.float(), record.input_timesteps.long()
        parts.append(Pool(x, t, ann_targets(source.unet, x, t, device)))
    if settings.pool in ("trajectories", "both"):
        parts.append(ann_trajectories(source, settings.trajectories, settings.trajectory_steps,
                                      trajectory_seed(settings.seed, 0), device))
    return Pool(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "t", "target")))


def trajectory_seed(seed: int, generation: int) -> int:
    """The noise seed of generation `generation` of fresh trajectories (0: the first pool's)."""
    return TRAJECTORY_SEED_OFFSET + seed + generation * GENERATION_SEED_STRIDE


def refresh_pool(pool: Pool, settings: FinetuneSettings, source: SourceModel, device: torch.device,
                 generation: int) -> Pool:
    """`pool` with its trajectory part (always last) replaced by generation `generation`'s fresh
    trajectories: a function of (seed, generation) only, so a resumed run rebuilds the same pool."""
    source.unet.to(device)
    fresh = ann_trajectories(source, settings.trajectories, settings.trajectory_steps,
                             trajectory_seed(settings.seed, generation), device)
    source.unet.to("cpu")
    keep = len(pool) - len(fresh)
    return Pool(*(torch.cat([getattr(pool, f)[:keep], getattr(fresh, f)]) for f in ("x", "t", "target")))


def held_out_inputs(settings: FinetuneSettings, source: SourceModel, device: torch.device) -> Pool:
    """Fixed held-out distillation inputs (QAT's before/after losses): --eval-size x_t spread evenly
    over ANN trajectories from a seed that no training generation uses."""
    count = max(1, math.ceil(settings.eval_size / settings.trajectory_steps))
    pool = ann_trajectories(source, count, settings.trajectory_steps, HELD_OUT_SEED, device)
    index = torch.linspace(0, len(pool) - 1, min(settings.eval_size, len(pool))).round().long().unique()
    return Pool(pool.x[index], pool.t[index], pool.target[index])


@dataclass
class SampleTargets:
    """Starting noises and the ANN's final DDIM samples from them (CPU)."""

    noise: torch.Tensor
    sample: torch.Tensor


def training_noises(settings: FinetuneSettings, shape: tuple[int, ...], step: int) -> torch.Tensor:
    """The --batch-size starting noises of training step `step` (sample target): never the
    evaluations' seeds (0, 1, ...), the held-out seed or a trajectory generation's."""
    return initial_noise(settings.batch_size, shape, NOISE_SEED_OFFSET + settings.seed * NOISE_SEED_STRIDE + step)


@torch.no_grad()
def ann_samples(source: SourceModel, noise: torch.Tensor, steps: int, device: torch.device) -> torch.Tensor:
    """The ANN's DDIM (eta 0) samples from `noise`, clipped to the image range, on `device` (the
    sample target's training loss uses them there every step)."""
    outs = [run_trajectory(as_eps_function(source.unet), chunk.to(device), "ddim", source.scheduler_config, steps)
            for chunk in noise.split(TARGET_CHUNK)]
    return torch.cat(outs).float().clamp(-1, 1)


def held_out_samples(settings: FinetuneSettings, source: SourceModel, device: torch.device) -> SampleTargets:
    """Fixed held-out noises (--eval-size, the held-out seed) and the ANN's samples from them:
    the sample target's before/after loss."""
    noise = initial_noise(settings.eval_size, sample_shape(source.unet), HELD_OUT_SEED)
    return SampleTargets(noise, ann_samples(source, noise, settings.trajectory_steps, device).cpu())


def load_images(settings: FinetuneSettings, snn: SpikingUNet2DModel) -> torch.Tensor:
    """Real images for the data loss, as uint8 NCHW at the model's resolution."""
    if snn.config.in_channels != 3:
        raise FinetuneError(f"--data needs a 3-channel (RGB) model; this one has {snn.config.in_channels} input channels")
    images = ImageSource(settings.data, limit=settings.data_limit, resolution=snn.config.sample_size).load()
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def step_sensitivity(settings: FinetuneSettings, snn: SpikingUNet2DModel, source: SourceModel,
                     device: torch.device) -> StepSensitivity:
    """The SNN's per-step sensitivity (converter/finetune/step_sensitivity.py) along --trajectory-steps DDIM
    trajectories from --sensitivity-samples held-out noises (the seed of the held-out inputs).
    QAT measures its twin in closed form (which its steps equal, at 1/T of the cost)."""
    if settings.method == "qat":
        snn.set_simulation("closed-form")
    noise = initial_noise(settings.sensitivity_samples, sample_shape(source.unet), HELD_OUT_SEED).to(device)
    return measure_step_sensitivity(as_eps_function(snn), as_eps_function(source.unet), noise, "ddim",
                                    source.scheduler_config, settings.trajectory_steps)

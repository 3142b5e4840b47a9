"""Training the project's own DDPM UNet (`sdm-train`) on an image folder or zip.

The network is a diffusers `UNet2DModel` in the DDPM layout (ResNet blocks, self-attention at
the chosen resolutions, GroupNorm, sinusoidal timestep embedding), configurable in width, levels,
attention and activation (SiLU, or ReLU for conversion-friendly source models), at 32x32 or
64x64. Loss: the DDPM eps-MSE at uniform random timesteps (linear betas 1e-4..0.02, 1000 steps).
AdamW with a linear warm-up, gradient clipping, EMA, bf16 autocast on CUDA, a fixed seed.

Images are center-cropped and resized to the model's resolution (`resize="crop"`, the face set's
policy) or must already have it (`resize="none"`); random horizontal flips.

`OUT/train_checkpoint.pt` is written atomically every `checkpoint_every` steps by the loop both
trainers share (core/training.py); `resume` continues with the same result as an uninterrupted
run (on CPU). The finished folder is written by pretrained/train_outputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from ..core.devices import resolve_device
from ..core.diffusion import to_model_range, training_example
from ..core.image_data import ImageSource
from ..core.training import (ResumableTrainer, check_output_folder, check_recipe, device_name, load_checkpoint,
                             run_steps, save_checkpoint, write_loss_log)
from .loading import load_source_model
from .own_layout import OwnLayoutConfig
from .train_outputs import CHECKPOINT, LOSS_COLUMNS, write_outputs
from .train_settings import TrainError, TrainSettings

CHECKPOINT_FORMAT = "sdm-train-checkpoint/1"
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        prediction_type="epsilon", variance_type="fixed_large", clip_sample=True)


def unet_config(settings: TrainSettings, init: UNet2DModel | None = None) -> dict[str, Any]:
    """The diffusers UNet2DModel configuration the options (or the --init model) describe."""
    if init is not None:
        config = {k: v for k, v in init.config.items() if not k.startswith("_")}
        return {**config, "act_fn": settings.activation or config["act_fn"]}
    mults, attention = settings.channel_multipliers(), settings.attention_sizes()
    if not mults or min(mults) < 1 or settings.channels < 1 or settings.layers_per_block < 1:
        raise TrainError("--channels, --channel-mult and --layers-per-block must be positive")
    if settings.channels * min(mults) % 32:
        raise TrainError(f"every level's width must be a multiple of 32 (GroupNorm groups); --channels {settings.channels} "
                         f"x {min(mults)} is not")
    sizes = [settings.resolution // 2 ** level for level in range(len(mults))]
    if sizes[-1] < 1 or settings.resolution % 2 ** (len(mults) - 1):
        raise TrainError(f"{len(mults)} levels do not fit a {settings.resolution}x{settings.resolution} image")
    unknown = attention - set(sizes)
    if unknown:
        raise TrainError(f"--attention-resolutions {sorted(unknown)} are not feature-map sizes of this model ({sizes})")
    layout = OwnLayoutConfig(ch=settings.channels, ch_mult=mults, attn=[i for i, size in enumerate(sizes) if size in attention],
                             num_res_blocks=settings.layers_per_block, dropout=settings.dropout, sample_size=settings.resolution,
                             in_channels=3)
    # The original DDPM's layout (so the own-layout ckpt.pt can hold it), with the chosen activation.
    return {**layout.to_diffusers_config(), "act_fn": settings.activation or "silu"}


def load_training_images(settings: TrainSettings) -> torch.Tensor:
    """The training set as uint8 NCHW at the model's resolution."""
    source = ImageSource(settings.data, split=settings.split, limit=settings.data_limit,
                         resolution=settings.resolution if settings.resize == "crop" else None)
    images = source.load()
    if images.shape[1:3] != (settings.resolution, settings.resolution):
        raise TrainError(f"images in {settings.data} are {images.shape[2]}x{images.shape[1]}, the model is "
                         f"{settings.resolution}x{settings.resolution}: pass --resize crop")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class Trainer(ResumableTrainer):
    """One training run: batches and the loss over the shared resumable trainer state."""

    def __init__(self, settings: TrainSettings, unet: UNet2DModel, images: torch.Tensor, device: torch.device,
                 scheduler_config: dict[str, Any]) -> None:
        unet = unet.to(device).train()
        super().__init__(list(unet.named_parameters()), torch.optim.AdamW(unet.parameters(), lr=settings.lr,
                                                                          weight_decay=0.0),
                         settings.ema, settings.seed, device, TrainError)
        self.settings, self.unet, self.images = settings, unet, images
        self.schedule = DDPMScheduler.from_config(scheduler_config)

    def learning_rate(self) -> float:
        s = self.settings
        return s.lr * min(1.0, (self.step + 1) / s.warmup) if s.warmup else s.lr

    def batch(self, generator: torch.Generator, index: torch.Tensor | None = None, flip: bool = True):
        if index is None:
            index = torch.randint(self.images.shape[0], (self.settings.batch_size,), generator=generator)
        x0 = to_model_range(self.images[index])
        if flip and self.settings.flip:
            mirrored = torch.rand(x0.shape[0], generator=generator) < 0.5
            x0 = torch.where(mirrored.view(-1, 1, 1, 1), x0.flip(-1), x0)
        return training_example(self.schedule, x0, generator)

    def loss(self, x: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.settings.bf16):
            prediction = self.unet(x.to(self.device), t.to(self.device)).sample
        return F.mse_loss(prediction.float(), target.to(self.device))

    def train_step(self) -> list[float]:
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(*self.batch(self.generator))
        grad_norm = self.optimise(loss, self.settings.grad_clip)
        return self.finish_step([loss.detach(), grad_norm, lr])

    @torch.no_grad()
    def evaluate(self, size: int = 64) -> float:
        """Loss of the (EMA, eval-mode) model on fixed images, noise and timesteps."""
        generator = torch.Generator().manual_seed(self.settings.seed + 1)
        index = torch.arange(min(size, self.images.shape[0]))
        model = self.exported()
        x, t, target = self.batch(generator, index, flip=False)
        prediction = torch.cat([model(xc.to(self.device), tc.to(self.device)).sample.float().cpu()
                                for xc, tc in zip(x.split(32), t.split(32))])
        return float(F.mse_loss(prediction, target))

    def exported(self) -> UNet2DModel:
        """An eval-mode copy of the model with the EMA weights (the weights that get saved)."""
        model = UNet2DModel(**{k: v for k, v in self.unet.config.items() if not k.startswith("_")}).to(self.device)
        model.load_state_dict(self.unet.state_dict())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.ema:
                    p.copy_(self.ema[name])
        return model.eval()

    def state(self, recipe: dict[str, Any], loss_before: float) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "config": dict(self.unet.config), "recipe": recipe,
                "model": {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()},
                "loss_before": loss_before, **self.common_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["model"])
        self.load_common_state(state)


def check_checkpoint(state: dict[str, Any], path: Path, config: dict[str, Any], recipe: dict[str, Any], steps: int) -> None:
    """Refuse a checkpoint of another architecture or recipe."""
    saved = {k: v for k, v in state["config"].items() if not k.startswith("_")}
    wanted = {k: v for k, v in config.items() if not k.startswith("_")}
    for key in sorted(set(saved) | set(wanted)):
        if json.dumps(saved.get(key)) != json.dumps(wanted.get(key)):
            raise TrainError(f"checkpoint {path} is of another architecture ({key}: {saved.get(key)} there, "
                             f"{wanted.get(key)} here)")
    check_recipe(state, path, recipe, steps, TrainError)


def train(settings: TrainSettings) -> dict[str, Any]:
    """The whole run: data, model (new or --init), resume, the shared training loop, outputs."""
    if settings.init is not None:
        source = load_source_model(settings.init)
        if source.unet.config.in_channels != 3 or source.unet.config.sample_size != settings.resolution:
            raise TrainError(f"--init {settings.init} is a {source.unet.config.in_channels}-channel "
                             f"{source.unet.config.sample_size}x{source.unet.config.sample_size} model; "
                             f"--resolution is {settings.resolution} (RGB)")
        config, scheduler_config = unet_config(settings, source.unet), dict(source.scheduler_config)
    else:
        source, config, scheduler_config = None, unet_config(settings), dict(SCHEDULER_CONFIG)
    check_output_folder(settings.out, CHECKPOINT, settings.resume, settings.overwrite, "training", TrainError)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    images = load_training_images(settings)
    unet = UNet2DModel(**config)
    if source is not None:
        unet.load_state_dict(source.unet.state_dict())
    recipe = settings.recipe()
    trainer = Trainer(settings, unet, images, device, scheduler_config)
    checkpoint_path = settings.out / CHECKPOINT
    if settings.resume:
        state = load_checkpoint(checkpoint_path, CHECKPOINT_FORMAT, "sdm-train", TrainError)
        check_checkpoint(state, checkpoint_path, dict(trainer.unet.config), recipe, settings.steps)
        trainer.load_state(state)
        loss_before = float(state["loss_before"])
    else:
        loss_before = trainer.evaluate()
        settings.out.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:
        save_checkpoint(trainer.state(recipe, loss_before), checkpoint_path, TrainError)
        write_loss_log(trainer.losses, LOSS_COLUMNS, settings.out / "loss_log.csv")

    run_steps(trainer, settings.steps, settings.checkpoint_every, checkpoint, "training", settings.time_limit)
    final_state = trainer.state(recipe, loss_before)
    model = trainer.exported()
    schedule = trainer.schedule.config
    summary = {
        "config": dict(model.config), "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"path": str(settings.data), "images": int(images.shape[0])}, "recipe": recipe, "steps": trainer.step,
        "time_limit": settings.time_limit or None,
        "schedule": (f"{schedule.num_train_timesteps} steps, {schedule.beta_schedule} betas "
                     f"{schedule.beta_start:g} .. {schedule.beta_end:g}, {schedule.prediction_type} prediction"),
        "init_activation": source.unet.config.act_fn if source is not None else None,
        "device": device_name(device), "seconds": {"training": trainer.seconds},
        "seconds_per_step": trainer.seconds / max(trainer.step, 1),
        "loss_before": loss_before, "loss_after": trainer.evaluate(),
    }
    write_outputs(settings, model, trainer.schedule, summary, trainer.losses, final_state, device)
    return summary

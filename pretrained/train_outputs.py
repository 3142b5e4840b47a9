"""What a training run leaves behind: a diffusers DDPMPipeline folder with the EMA weights (what
`sdm-convert --checkpoint OUT` reads), the same weights in the own layout (ckpt.pt, when the
configuration has one), MODEL_CARD.md, samples.png, loss_log.csv, training.json and the final checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from ..core.atomic import atomic_folder
from ..core.images import save_grid_rows, to_uint8
from ..core.training import save_checkpoint, write_loss_log
from .own_layout import OwnLayoutError, save_own_layout_checkpoint
from .train_settings import TrainError, TrainSettings

CHECKPOINT = "train_checkpoint.pt"
LOSS_COLUMNS = ["step", "loss", "grad_norm", "lr"]


@torch.no_grad()
def sample_grid(model: UNet2DModel, schedule: DDPMScheduler, count: int, steps: int, seed: int, path: Path) -> None:
    scheduler = DDIMScheduler.from_config(schedule.config)
    pipeline = DDPMPipeline(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(batch_size=count, num_inference_steps=steps, generator=generator, output_type="np").images
    images = to_uint8(images.transpose(0, 3, 1, 2) * 2.0 - 1.0)  # the pipeline's NHWC [0, 1] back to model range
    per_row = math.ceil(math.sqrt(len(images)))
    save_grid_rows([images[i:i + per_row] for i in range(0, len(images), per_row)], path)


def stopped_by_time_limit(settings: TrainSettings, steps_done: int) -> str:
    """' (stopped by --time-limit N s)' when the budget, not --steps, ended the run; else ''."""
    if settings.time_limit and steps_done < settings.steps:
        return f" (stopped by --time-limit {settings.time_limit:g} s)"
    return ""


def model_card(settings: TrainSettings, summary: dict[str, Any]) -> str:
    config = summary["config"]
    return "\n".join([
        f"# {settings.out.name} (trained with sdm-train)", "",
        f"- Architecture: diffusers `UNet2DModel`, {config['sample_size']}x{config['sample_size']}, block_out_channels "
        f"{tuple(config['block_out_channels'])}, {config['layers_per_block']} ResNet blocks per level, blocks "
        f"{', '.join(config['down_block_types'])}, activation {config['act_fn']}, GroupNorm(32), dropout "
        f"{config['dropout']}; {summary['parameters']:,} parameters.",
        f"- Diffusion: {summary['schedule']}.",
        *([f"- Prepared from {settings.init}: its weights, activation {summary['init_activation']} -> {config['act_fn']}, "
           f"then fine-tuned as below."] if settings.init else []),
        f"- Data: {summary['data']['path']} ({summary['data']['images']} images"
        f"{', split ' + settings.split if settings.split else ''}, resize policy {settings.resize}"
        f"{', random horizontal flip' if settings.flip else ''}).",
        f"- Training: {summary['steps']} steps{stopped_by_time_limit(settings, summary['steps'])}, "
        f"batch {settings.batch_size}, AdamW lr {settings.lr} ({settings.warmup}-step warm-up), "
        f"grad clip {settings.grad_clip}, EMA {settings.ema} (the saved weights are the EMA's), "
        f"{'bf16 autocast' if settings.bf16 else 'fp32'}, seed {settings.seed}.",
        f"- Cost: {summary['seconds']['training']:.0f} s of training on {summary['device']}.",
        f"- Loss on fixed held-in inputs: {summary['loss_before']:.4f} before, {summary['loss_after']:.4f} after.",
        "- Quality: FID not measured by this command (run `eval/compare.py` with `--fid-ref` on >= 5,000 samples).",
        "", "![samples](samples.png)", "",
    ])


def write_outputs(settings: TrainSettings, model: UNet2DModel, schedule: DDPMScheduler, summary: dict[str, Any],
                  losses: list[list[float]], final_state: dict[str, Any], device: torch.device) -> None:
    """Replace `settings.out` atomically by the finished run's folder."""
    with atomic_folder(settings.out, overwrite=True) as staging:
        pipeline = DDPMPipeline(unet=model.cpu(), scheduler=schedule)
        pipeline.save_pretrained(staging)
        try:
            save_own_layout_checkpoint(model, staging / "ckpt.pt")
            summary["own_layout"] = "ckpt.pt"
        except OwnLayoutError as exc:
            summary["own_layout"] = f"not written: {exc}"
        sample_grid(model.to(device), schedule, settings.sample_count, settings.sample_steps, settings.seed,
                    staging / "samples.png")
        write_loss_log(losses, LOSS_COLUMNS, staging / "loss_log.csv")
        save_checkpoint(final_state, staging / CHECKPOINT, TrainError)
        (staging / "training.json").write_text(json.dumps(summary, indent=2, default=str))
        (staging / "MODEL_CARD.md").write_text(model_card(settings, summary))

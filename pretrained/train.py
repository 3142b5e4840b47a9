"""`sdm-train`: train the project's own DDPM UNet on an image folder or zip.

The network is a diffusers `UNet2DModel` in the DDPM layout (ResNet blocks, self-attention at
the chosen resolutions, GroupNorm, sinusoidal timestep embedding), configurable in width, levels,
attention and activation (SiLU, or ReLU for conversion-friendly source models), at 32x32 or
64x64. Loss: the DDPM eps-MSE at uniform random timesteps (linear betas 1e-4..0.02, 1000 steps).
AdamW with a linear warm-up, gradient clipping, EMA, bf16 autocast on CUDA, a fixed seed.

Images are center-cropped and resized to the model's resolution (`--resize crop`, the face set's
policy) or must already have it (`--resize none`); random horizontal flips.

`OUT/train_checkpoint.pt` (model, EMA, optimiser, RNG, step, losses) is written atomically every
`--checkpoint-every` steps; `--resume` continues with the same result as an uninterrupted run (on
CPU). When training ends, OUT is replaced atomically by a diffusers `DDPMPipeline` folder holding
the EMA weights (what `sdm-convert --checkpoint OUT` reads), the same weights in the own layout
(`ckpt.pt`, when the configuration has one), a generated MODEL_CARD.md, samples.png, loss_log.csv,
training.json and the final checkpoint (resume with a larger --steps to train on).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from sdm.pretrained.own_layout import OwnLayoutConfig, OwnLayoutError, save_own_layout_checkpoint
from sdm.core.atomic import atomic_folder
from sdm.core.errors import SdmError, run_reporting_errors
from sdm.core.training import (check_output_folder, data_target, device_name, ema_update, load_checkpoint, save_checkpoint, to_model_range,
                          write_loss_log)

CHECKPOINT = "train_checkpoint.pt"
CHECKPOINT_FORMAT = "sdm-train-checkpoint/1"
LOSS_COLUMNS = ["step", "loss", "grad_norm", "lr"]
ACTIVATIONS = ("silu", "relu")
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        prediction_type="epsilon", variance_type="fixed_large", clip_sample=True)
# Options whose change would change the result: a resumed run must use the checkpoint's values.
RECIPE_KEYS = ("data", "data_limit", "resize", "batch_size", "lr", "warmup", "ema", "grad_clip", "bf16", "seed", "flip",
               "init")


class TrainError(SdmError):
    """Bad options, an unusable dataset, or a checkpoint that belongs to another model or run."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdm-train", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="images: a folder or a zip (e.g. the CIFAR-10 zip)")
    p.add_argument("--out", type=Path, required=True, help="output folder (holds the checkpoint while training)")
    p.add_argument("--split", default=None, help="keep images under a folder of this name (CIFAR-10 zip: train)")
    p.add_argument("--data-limit", type=int, default=None, help="seeded subset of this many images (default: all)")
    p.add_argument("--resize", choices=("crop", "none"), default="crop",
                   help="crop: center-crop and resize to --resolution; none: images must already be that size")
    p.add_argument("--resolution", type=int, default=32, choices=(32, 64))
    p.add_argument("--channels", type=int, default=64, help="width of the first level (default 64)")
    p.add_argument("--channel-mult", default="1,2,2,2", help="width multiplier per level (default 1,2,2,2)")
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--attention-resolutions", default="16", help="feature-map sizes with self-attention, e.g. 16 or 16,8 ('' for none)")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="silu (default for new models) or relu; with --init, swaps the source's activation")
    p.add_argument("--init", default=None,
                   help="start from this source model (path or zoo name) instead of random weights: its architecture, "
                        "weights and noise schedule; with --activation relu this is the conversion-friendly 'prepare' step")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1000, help="total optimiser steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.9995, help="EMA decay (0 = off; the saved model uses the EMA weights)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500, help="write the checkpoint every N steps (0: only at the end)")
    p.add_argument("--sample-count", type=int, default=16, help="images in samples.png (DDIM, seeded)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    return p


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TrainError(f"{flag} must be comma-separated integers, got {text!r}") from None


def unet_config(args: argparse.Namespace, init: UNet2DModel | None = None) -> dict[str, Any]:
    """The diffusers UNet2DModel configuration the options (or the --init model) describe."""
    if init is not None:
        config = {k: v for k, v in init.config.items() if not k.startswith("_")}
        return {**config, "act_fn": args.activation or config["act_fn"]}
    mults = _ints(args.channel_mult, "--channel-mult")
    attention = set(_ints(args.attention_resolutions, "--attention-resolutions"))
    if not mults or min(mults) < 1 or args.channels < 1 or args.layers_per_block < 1:
        raise TrainError("--channels, --channel-mult and --layers-per-block must be positive")
    if args.channels * min(mults) % 32:
        raise TrainError(f"every level's width must be a multiple of 32 (GroupNorm groups); --channels {args.channels} "
                         f"x {min(mults)} is not")
    sizes = [args.resolution // 2 ** level for level in range(len(mults))]
    if sizes[-1] < 1 or args.resolution % 2 ** (len(mults) - 1):
        raise TrainError(f"{len(mults)} levels do not fit a {args.resolution}x{args.resolution} image")
    unknown = attention - set(sizes)
    if unknown:
        raise TrainError(f"--attention-resolutions {sorted(unknown)} are not feature-map sizes of this model ({sizes})")
    layout = OwnLayoutConfig(ch=args.channels, ch_mult=mults, attn=[i for i, size in enumerate(sizes) if size in attention],
                             num_res_blocks=args.layers_per_block, dropout=args.dropout, sample_size=args.resolution,
                             in_channels=3)
    # The original DDPM's layout (so the own-layout ckpt.pt can hold it), with the chosen activation.
    return {**layout.to_diffusers_config(), "act_fn": args.activation or "silu"}


def validate(args: argparse.Namespace) -> None:
    checks = [
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr must be > 0, got {args.lr}"),
        (args.warmup >= 0, f"--warmup must be >= 0, got {args.warmup}"),
        (0 <= args.ema < 1, f"--ema must be in [0, 1), got {args.ema}"),
        (args.grad_clip >= 0, f"--grad-clip must be >= 0, got {args.grad_clip}"),
        (args.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {args.checkpoint_every}"),
        (args.data_limit is None or args.data_limit >= 1, f"--data-limit must be >= 1, got {args.data_limit}"),
        (0 <= args.dropout < 1, f"--dropout must be in [0, 1), got {args.dropout}"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainError(message)


def load_training_images(args: argparse.Namespace) -> torch.Tensor:
    """The training set as uint8 NCHW at the model's resolution."""
    from sdm.eval.image_data import ImageSource

    source = ImageSource(args.data, split=args.split, limit=args.data_limit,
                         resolution=args.resolution if args.resize == "crop" else None)
    images = source.load()
    if images.shape[1:3] != (args.resolution, args.resolution):
        raise TrainError(f"images in {args.data} are {images.shape[2]}x{images.shape[1]}, the model is "
                         f"{args.resolution}x{args.resolution}: pass --resize crop")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class Trainer:
    """One training run: batches, loss, optimiser, EMA; all state goes into checkpoints."""

    def __init__(self, args: argparse.Namespace, unet: UNet2DModel, images: torch.Tensor, device: torch.device,
                 scheduler_config: dict[str, Any]) -> None:
        self.args, self.unet, self.images, self.device = args, unet.to(device).train(), images, device
        self.schedule = DDPMScheduler.from_config(scheduler_config)
        self.optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
        self.ema = {n: p.detach().clone() for n, p in unet.named_parameters()} if args.ema > 0 else {}
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step, self.seconds = 0, 0.0
        self.losses: list[list[float]] = []

    def learning_rate(self) -> float:
        return self.args.lr * min(1.0, (self.step + 1) / self.args.warmup) if self.args.warmup else self.args.lr

    def batch(self, generator: torch.Generator, index: torch.Tensor | None = None, flip: bool = True):
        if index is None:
            index = torch.randint(self.images.shape[0], (self.args.batch_size,), generator=generator)
        x0 = to_model_range(self.images[index])
        if flip and self.args.flip:
            mirrored = torch.rand(x0.shape[0], generator=generator) < 0.5
            x0 = torch.where(mirrored.view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = torch.randint(0, self.schedule.config.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        return self.schedule.add_noise(x0, noise, t), t, data_target(self.schedule, x0, noise, t)

    def loss(self, x: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            prediction = self.unet(x.to(self.device), t.to(self.device)).sample
        return F.mse_loss(prediction.float(), target.to(self.device))

    def train_step(self) -> list[float]:
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(*self.batch(self.generator))
        if not torch.isfinite(loss):
            raise TrainError(f"loss became {float(loss)} at step {self.step + 1}; lower --lr or use --grad-clip")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.args.grad_clip or float("inf"))
        self.optimizer.step()
        self.step += 1
        if self.ema:
            ema_update(self.ema, self.unet.named_parameters(), self.args.ema, self.step)
        row = [float(self.step), float(loss.detach()), float(grad_norm), lr]
        self.losses.append(row)
        return row

    @torch.no_grad()
    def evaluate(self, size: int = 64) -> float:
        """Loss of the (EMA, eval-mode) model on fixed images, noise and timesteps."""
        generator = torch.Generator().manual_seed(self.args.seed + 1)
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
        return {
            "format": CHECKPOINT_FORMAT, "config": dict(self.unet.config), "recipe": recipe, "step": self.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.unet.state_dict().items()},
            "ema": {k: v.cpu().clone() for k, v in self.ema.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": {"batches": self.generator.get_state(), "torch": torch.get_rng_state()},
            "losses": [list(r) for r in self.losses], "loss_before": loss_before, "seconds": self.seconds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.generator.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.losses = [list(r) for r in state["losses"]]


def check_checkpoint(state: dict[str, Any], path: Path, config: dict[str, Any], recipe: dict[str, Any], steps: int) -> None:
    """Refuse a checkpoint of another architecture or recipe."""
    saved = {k: v for k, v in state["config"].items() if not k.startswith("_")}
    wanted = {k: v for k, v in config.items() if not k.startswith("_")}
    for key in sorted(set(saved) | set(wanted)):
        if json.dumps(saved.get(key)) != json.dumps(wanted.get(key)):
            raise TrainError(f"checkpoint {path} is of another architecture ({key}: {saved.get(key)} there, "
                             f"{wanted.get(key)} here)")
    for key in RECIPE_KEYS:
        if state["recipe"].get(key) != recipe[key]:
            raise TrainError(f"checkpoint {path} was made with --{key.replace('_', '-')} {state['recipe'].get(key)}, "
                             f"this run has {recipe[key]} (resume with the same options)")
    if state["step"] > steps:
        raise TrainError(f"checkpoint {path} is at step {state['step']}, beyond --steps {steps}")


@torch.no_grad()
def sample_grid(model: UNet2DModel, schedule: DDPMScheduler, count: int, steps: int, seed: int, path: Path) -> None:
    from sdm.eval.images import save_grid_rows, to_uint8

    scheduler = DDIMScheduler.from_config(schedule.config)
    pipeline = DDPMPipeline(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(batch_size=count, num_inference_steps=steps, generator=generator, output_type="np").images
    images = to_uint8(images.transpose(0, 3, 1, 2) * 2.0 - 1.0)  # the pipeline's NHWC [0, 1] back to model range
    per_row = math.ceil(math.sqrt(len(images)))
    save_grid_rows([images[i:i + per_row] for i in range(0, len(images), per_row)], path)


def model_card(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    config = summary["config"]
    return "\n".join([
        f"# {args.out.name} (trained with sdm-train)", "",
        f"- Architecture: diffusers `UNet2DModel`, {config['sample_size']}x{config['sample_size']}, block_out_channels "
        f"{tuple(config['block_out_channels'])}, {config['layers_per_block']} ResNet blocks per level, blocks "
        f"{', '.join(config['down_block_types'])}, activation {config['act_fn']}, GroupNorm(32), dropout "
        f"{config['dropout']}; {summary['parameters']:,} parameters.",
        f"- Diffusion: {summary['schedule']}.",
        *([f"- Prepared from {args.init}: its weights, activation {summary['init_activation']} -> {config['act_fn']}, "
           f"then fine-tuned as below."] if args.init else []),
        f"- Data: {summary['data']['path']} ({summary['data']['images']} images"
        f"{', split ' + args.split if args.split else ''}, resize policy {args.resize}"
        f"{', random horizontal flip' if args.flip else ''}).",
        f"- Training: {summary['steps']} steps, batch {args.batch_size}, AdamW lr {args.lr} ({args.warmup}-step warm-up), "
        f"grad clip {args.grad_clip}, EMA {args.ema} (the saved weights are the EMA's), "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, seed {args.seed}.",
        f"- Cost: {summary['seconds']['training']:.0f} s of training on {summary['device']}.",
        f"- Loss on fixed held-in inputs: {summary['loss_before']:.4f} before, {summary['loss_after']:.4f} after.",
        "- Quality: FID not measured by this command (run `eval/compare.py` with `--fid-ref` on >= 5,000 samples).",
        "", "![samples](samples.png)", "",
    ])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sdm.core.devices import resolve_device

    validate(args)
    if args.init is not None:
        from sdm.pretrained.loading import load_source_model

        source = load_source_model(args.init)
        if source.unet.config.in_channels != 3 or source.unet.config.sample_size != args.resolution:
            raise TrainError(f"--init {args.init} is a {source.unet.config.in_channels}-channel "
                             f"{source.unet.config.sample_size}x{source.unet.config.sample_size} model; "
                             f"--resolution is {args.resolution} (RGB)")
        config, scheduler_config = unet_config(args, source.unet), dict(source.scheduler_config)
    else:
        source, config, scheduler_config = None, unet_config(args), dict(SCHEDULER_CONFIG)
    check_output_folder(args.out, CHECKPOINT, args.resume, args.overwrite, "training", TrainError)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    images = load_training_images(args)
    unet = UNet2DModel(**config)
    if source is not None:
        unet.load_state_dict(source.unet.state_dict())
    recipe = {key: getattr(args, key) for key in RECIPE_KEYS}
    recipe["data"] = str(args.data)
    trainer = Trainer(args, unet, images, device, scheduler_config)
    checkpoint_path = args.out / CHECKPOINT
    if args.resume:
        state = load_checkpoint(checkpoint_path, CHECKPOINT_FORMAT, "sdm-train", TrainError)
        check_checkpoint(state, checkpoint_path, dict(trainer.unet.config), recipe, args.steps)
        trainer.load_state(state)
        loss_before = float(state["loss_before"])
    else:
        loss_before = trainer.evaluate()
        args.out.mkdir(parents=True, exist_ok=True)
    progress = tqdm(total=args.steps, initial=trainer.step, desc="training", unit="step")
    while trainer.step < args.steps:
        start = time.perf_counter()
        row = trainer.train_step()
        trainer.seconds += time.perf_counter() - start
        progress.update()
        progress.set_postfix(loss=f"{row[1]:.4f}")
        if args.checkpoint_every and trainer.step % args.checkpoint_every == 0 and trainer.step < args.steps:
            save_checkpoint(trainer.state(recipe, loss_before), checkpoint_path, TrainError)
            write_loss_log(trainer.losses, LOSS_COLUMNS, args.out / "loss_log.csv")
    progress.close()
    final_state = trainer.state(recipe, loss_before)
    model = trainer.exported()
    summary = {
        "config": dict(model.config), "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"path": str(args.data), "images": int(images.shape[0])}, "recipe": recipe, "steps": trainer.step,
        "schedule": (f"{trainer.schedule.config.num_train_timesteps} steps, {trainer.schedule.config.beta_schedule} betas "
                     f"{trainer.schedule.config.beta_start:g} .. {trainer.schedule.config.beta_end:g}, "
                     f"{trainer.schedule.config.prediction_type} prediction"),
        "init_activation": source.unet.config.act_fn if source is not None else None,
        "device": device_name(device), "seconds": {"training": trainer.seconds},
        "seconds_per_step": trainer.seconds / max(trainer.step, 1),
        "loss_before": loss_before, "loss_after": trainer.evaluate(),
    }
    with atomic_folder(args.out, overwrite=True) as staging:
        pipeline = DDPMPipeline(unet=model.cpu(), scheduler=trainer.schedule)
        pipeline.save_pretrained(staging)
        try:
            save_own_layout_checkpoint(model, staging / "ckpt.pt")
            summary["own_layout"] = "ckpt.pt"
        except OwnLayoutError as exc:
            summary["own_layout"] = f"not written: {exc}"
        sample_grid(model.to(device), trainer.schedule, args.sample_count, args.sample_steps, args.seed, staging / "samples.png")
        write_loss_log(trainer.losses, LOSS_COLUMNS, staging / "loss_log.csv")
        save_checkpoint(final_state, staging / CHECKPOINT, TrainError)
        (staging / "training.json").write_text(json.dumps(summary, indent=2, default=str))
        (staging / "MODEL_CARD.md").write_text(model_card(args, summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary, code = run_reporting_errors("sdm-train", lambda: run(args),
                                         f"continue from the last checkpoint with --resume (in {args.out})")
    if code:
        return code
    print(f"wrote {args.out}: {summary['steps']} steps, loss {summary['loss_before']:.4f} -> {summary['loss_after']:.4f}, "
          f"{summary['seconds_per_step']:.3f} s/step on {summary['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

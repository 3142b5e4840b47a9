"""`sdm-finetune`: learn the TSM factors p[t] (and optionally thresholds or all weights) of a converted SNN.

Losses (weights `--distill-weight`, `--data-weight`):
- distillation, no data needed: on x_t the source ANN visits along its own DDIM trajectories
  (the calibration record's stored inputs and/or fresh trajectories from seeded noise),
  MSE(snn(x_t, t).sample, ann(x_t, t).sample); the ANN targets are computed once up front;
- data: the usual diffusion loss on real images, x_t ~ q(x_t | x_0) at uniform random training
  timesteps (the source's scheduler config from the SNN's provenance), MSE against the
  scheduler's prediction target (eps for the reference model).

Training state lives in `OUT/checkpoint.pt` (written every `--checkpoint-every` steps, atomically):
trainable values, optimiser, EMA, RNG state, step and loss history; `--resume` continues from it
with bit-identical results to an uninterrupted run (on CPU; CUDA kernels may be
non-deterministic). When training ends, OUT is replaced atomically by a converted-model folder
(the same format as sdm-convert, loadable by `load_converted` and `eval/compare.py`) with
tsm.json, tsm.png, loss_log.csv, finetune.json and the final checkpoint.pt (resume it with a
larger --steps to train on).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from sdm.calibration.record import CalibrationError, CalibrationRecord
from sdm.converter.allocator import retain_freed_memory
from sdm.converter.export import check_same_source, load_converted, save_converted
from sdm.converter.model import SpikingUNet2DModel
from sdm.converter.operations import operations_report
from sdm.converter.tsm import TRAINABLE, clamp_thresholds_, freeze, set_trainable, tsm_values
from sdm.pretrained.loading import SourceModel, load_source_model, state_dict_fingerprint
from sdm.pretrained.zoo import DEFAULT_MODEL
from sdm.core.atomic import atomic_folder
from sdm.core.errors import SdmError, run_reporting_errors
from sdm.core.training import check_output_folder, data_target, device_name, ema_update, load_checkpoint, save_checkpoint, to_model_range, write_loss_log

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "sdm-finetune-checkpoint/1"
POOLS = ("record", "trajectories", "both")
TRAJECTORY_SEED_OFFSET = 1000  # fresh trajectories start away from the noise seeds evaluations use (0, 1, ...)
TARGET_CHUNK = 16
LOSS_COLUMNS = ["step", "loss", "distill_loss", "data_loss", "grad_norm"]
# Options whose change would change the result: a resumed run must use the checkpoint's values.
RECIPE_KEYS = ("train", "lr", "batch_size", "seed", "distill_weight", "data_weight", "data", "data_limit",
               "bf16", "ema", "grad_clip", "pool", "trajectories", "trajectory_steps", "eval_size")


class FinetuneError(SdmError):
    """Bad options, an unusable folder or dataset, or a checkpoint that belongs to another run."""


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdm-finetune",
        description="Fine-tune a converted SNN: learn TSM factors p[t] per spiking site and time step "
                    "(optionally thresholds, or everything) by distillation from the source ANN and/or real images.",
    )
    parser.add_argument("--snn", type=Path, required=True, help="converted model folder made by sdm-convert")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also holds checkpoint.pt while training)")
    parser.add_argument("--ann", default=None,
                        help="source ANN (path or embedded name; default: the source recorded in the SNN's "
                             f"provenance if it exists here, else {DEFAULT_MODEL})")
    parser.add_argument("--steps", type=int, default=500, help="total optimiser steps (default 500)")
    parser.add_argument("--batch-size", type=int, default=8, help="inputs per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--train", choices=TRAINABLE, default="p",
                        help="p: TSM factors only (default); thresholds: p + neuron thresholds; "
                             "all: p, thresholds, bias currents and all weights")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the ANN distillation loss (default 1)")
    parser.add_argument("--data-weight", type=float, default=0.0, help="weight of the eps-MSE loss on real images (default 0)")
    parser.add_argument("--data", type=Path, default=None, help="images for the data loss: a zip or a folder")
    parser.add_argument("--data-limit", type=int, default=5000, help="images read from --data, seeded subset (default 5000)")
    parser.add_argument("--pool", choices=POOLS, default="record",
                        help="distillation inputs: the calibration record's stored x_t (default), fresh ANN DDIM "
                             "trajectories, or both")
    parser.add_argument("--trajectories", type=int, default=8, help="fresh DDIM trajectories for --pool trajectories|both (default 8)")
    parser.add_argument("--trajectory-steps", type=int, default=10, help="DDIM steps per fresh trajectory (default 10)")
    parser.add_argument("--eval-size", type=int, default=16, help="fixed inputs on which losses before/after are measured (default 16)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the SNN forward/backward")
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the trainable values, 0 = off (e.g. 0.999); "
                                                              "the saved model uses the EMA values")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off; default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of batch sampling and data noise (default 0)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="write OUT/checkpoint.pt every N steps (0: only at the end; default 100)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (same options, possibly more --steps)")
    parser.add_argument("--overwrite", action="store_true", help="start over in a non-empty output folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    return parser


def validate(args: argparse.Namespace) -> None:
    checks = [
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr must be > 0, got {args.lr}"),
        (args.distill_weight >= 0, f"--distill-weight must be >= 0, got {args.distill_weight}"),
        (args.data_weight >= 0, f"--data-weight must be >= 0, got {args.data_weight}"),
        (args.distill_weight > 0 or args.data_weight > 0, "--distill-weight and --data-weight are both 0: nothing to train on"),
        (args.data_weight == 0 or args.data is not None, "--data-weight > 0 needs --data (a zip or folder of images)"),
        (args.data is None or args.data_weight > 0, "--data given but --data-weight is 0 (pass --data-weight > 0)"),
        (args.data_limit >= 1, f"--data-limit must be >= 1, got {args.data_limit}"),
        (args.trajectories >= 1, f"--trajectories must be >= 1, got {args.trajectories}"),
        (args.trajectory_steps >= 1, f"--trajectory-steps must be >= 1, got {args.trajectory_steps}"),
        (args.eval_size >= 1, f"--eval-size must be >= 1, got {args.eval_size}"),
        (0 <= args.ema < 1, f"--ema must be in [0, 1), got {args.ema}"),
        (args.grad_clip >= 0, f"--grad-clip must be >= 0, got {args.grad_clip}"),
        (args.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {args.checkpoint_every}"),
        (not (args.resume and args.overwrite), "--resume and --overwrite contradict each other"),
    ]
    for ok, message in checks:
        if not ok:
            raise FinetuneError(message)


def recipe_of(args: argparse.Namespace) -> dict[str, Any]:
    recipe = {key: getattr(args, key) for key in RECIPE_KEYS}
    recipe["data"] = str(args.data) if args.data is not None else None
    return recipe


# ----------------------------------------------------------------------------- checkpoints


def check_checkpoint(state: dict[str, Any], path: Path, identity: dict[str, Any], recipe: dict[str, Any], steps: int) -> None:
    """Refuse a checkpoint of another model, another T, another conversion or another recipe."""
    if state["source_fingerprint"] != identity["source_fingerprint"]:
        raise FinetuneError(f"checkpoint {path} is from another model (source fingerprint {state['source_fingerprint']}, "
                            f"this SNN's is {identity['source_fingerprint']})")
    if state["timesteps"] != identity["timesteps"]:
        raise FinetuneError(f"checkpoint {path} was trained at T={state['timesteps']}, this SNN has T={identity['timesteps']}")
    if state["snn_fingerprint"] != identity["snn_fingerprint"]:
        raise FinetuneError(f"checkpoint {path} belongs to another conversion of this model (different thresholds or weights)")
    for key in RECIPE_KEYS:
        if state["recipe"].get(key) != recipe[key]:
            flag = "--" + key.replace("_", "-")
            raise FinetuneError(f"checkpoint {path} was made with {flag} {state['recipe'].get(key)}, this run has "
                                f"{recipe[key]} (resume with the same options)")
    if state["step"] > steps:
        raise FinetuneError(f"checkpoint {path} is at step {state['step']}, beyond --steps {steps}")


# ----------------------------------------------------------------------------- inputs


@dataclass
class Pool:
    """Distillation inputs x_t, their diffusion timesteps and the ANN's predictions on them (CPU)."""

    x: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@torch.no_grad()
def ann_targets(ann: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    outs = [ann(xc.to(device), tc.to(device)).sample.float().cpu() for xc, tc in zip(x.split(TARGET_CHUNK), t.split(TARGET_CHUNK))]
    return torch.cat(outs)


@torch.no_grad()
def ann_trajectories(source: SourceModel, count: int, steps: int, seed: int, device: torch.device) -> Pool:
    """x_t along the ANN's DDIM (eta 0) trajectories from seeded Gaussian noise, with eps on each."""
    config = source.unet.config
    noise = torch.randn((count, config.in_channels, config.sample_size, config.sample_size),
                        generator=torch.Generator().manual_seed(seed))
    xs, ts, targets = [], [], []
    progress = tqdm(total=math.ceil(count / TARGET_CHUNK) * steps, desc="ANN trajectories", unit="eval")
    for chunk in noise.split(TARGET_CHUNK):
        scheduler = DDIMScheduler.from_config(source.scheduler_config)
        scheduler.set_timesteps(steps)
        x = chunk.to(device)
        for t in scheduler.timesteps:
            eps = source.unet(x, t).sample
            xs.append(x.cpu())
            ts.append(torch.full((x.shape[0],), int(t), dtype=torch.long))
            targets.append(eps.float().cpu())
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            progress.update()
    progress.close()
    return Pool(torch.cat(xs), torch.cat(ts), torch.cat(targets))


def build_pool(args: argparse.Namespace, source: SourceModel, record: CalibrationRecord | None, device: torch.device) -> Pool:
    parts = []
    if args.pool in ("record", "both"):
        if record is None or record.inputs is None:
            raise FinetuneError(f"{args.snn} has no calibration inputs stored in its record; use --pool trajectories")
        x, t = record.inputs.float(), record.input_timesteps.long()
        parts.append(Pool(x, t, ann_targets(source.unet, x, t, device)))
    if args.pool in ("trajectories", "both"):
        parts.append(ann_trajectories(source, args.trajectories, args.trajectory_steps,
                                      TRAJECTORY_SEED_OFFSET + args.seed, device))
    return Pool(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "t", "target")))


def load_images(args: argparse.Namespace, snn: SpikingUNet2DModel) -> torch.Tensor:
    """Real images as uint8 NCHW at the model's resolution."""
    from sdm.eval.image_data import ImageSource

    if snn.config.in_channels != 3:
        raise FinetuneError(f"--data needs a 3-channel (RGB) model; this one has {snn.config.in_channels} input channels")
    images = ImageSource(args.data, limit=args.data_limit, resolution=snn.config.sample_size).load()
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- training


class Trainer:
    """One fine-tuning run: batches, losses, optimiser, EMA; all state goes into checkpoints."""

    def __init__(self, args: argparse.Namespace, snn: SpikingUNet2DModel, pool: Pool, images: torch.Tensor | None,
                 schedule: DDPMScheduler, device: torch.device) -> None:
        self.args, self.snn, self.pool, self.images, self.schedule, self.device = args, snn, pool, images, schedule, device
        self.named = set_trainable(snn, args.train)
        self.params = [p for _, p in self.named]
        self.optimizer = torch.optim.Adam(self.params, lr=args.lr)
        self.ema = {name: p.detach().clone() for name, p in self.named} if args.ema > 0 else {}
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.losses: list[list[float]] = []  # [step, loss, distill, data, grad_norm]
        self.seconds = 0.0

    # batches -------------------------------------------------------------------------
    def distill_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.pool), (self.args.batch_size,), generator=self.generator)
        return self.pool.x[index], self.pool.t[index], self.pool.target[index]

    def data_batch(self, generator: torch.Generator | None = None, index: torch.Tensor | None = None):
        generator = generator or self.generator
        if index is None:
            index = torch.randint(self.images.shape[0], (self.args.batch_size,), generator=generator)
        x0 = to_model_range(self.images[index])
        t = torch.randint(0, self.schedule.config.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        return self.schedule.add_noise(x0, noise, t), t, data_target(self.schedule, x0, noise, t)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            out = self.snn(x.to(self.device), t.to(self.device)).sample
        return out.float()

    # one step ------------------------------------------------------------------------
    def train_step(self) -> list[float]:
        args = self.args
        self.optimizer.zero_grad(set_to_none=True)
        distill = data = torch.zeros((), device=self.device)
        if args.distill_weight > 0:
            x, t, target = self.distill_batch()
            distill = F.mse_loss(self.predict(x, t), target.to(self.device))
        if args.data_weight > 0:
            x, t, target = self.data_batch()
            data = F.mse_loss(self.predict(x, t), target.to(self.device))
        loss = args.distill_weight * distill + args.data_weight * data
        if not torch.isfinite(loss):
            raise FinetuneError(f"loss became {float(loss)} at step {self.step + 1}; lower --lr or use --grad-clip")
        loss.backward()
        max_norm = args.grad_clip if args.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        if args.train != "p":
            clamp_thresholds_(self.snn)
        self.step += 1
        if self.ema:
            ema_update(self.ema, self.named, args.ema, self.step)
        row = [float(self.step), *(float(v.detach()) for v in (loss, distill, data, grad_norm))]
        self.losses.append(row)
        return row

    # evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Losses on fixed inputs (fp32, no autocast): the first eval-size pool inputs, spread evenly."""
        result: dict[str, float] = {}
        count = min(self.args.eval_size, len(self.pool))
        if self.args.distill_weight > 0:
            index = torch.linspace(0, len(self.pool) - 1, count).round().long().unique()
            outs = [self.snn(x.to(self.device), t.to(self.device)).sample.float().cpu()
                    for x, t in zip(self.pool.x[index].split(TARGET_CHUNK), self.pool.t[index].split(TARGET_CHUNK))]
            result["distill"] = float(F.mse_loss(torch.cat(outs), self.pool.target[index]))
        if self.args.data_weight > 0:
            generator = torch.Generator().manual_seed(self.args.seed + 1)
            index = torch.arange(min(self.args.eval_size, self.images.shape[0]))
            x, t, target = self.data_batch(generator, index)
            outs = [self.snn(xc.to(self.device), tc.to(self.device)).sample.float().cpu()
                    for xc, tc in zip(x.split(TARGET_CHUNK), t.split(TARGET_CHUNK))]
            result["data"] = float(F.mse_loss(torch.cat(outs), target))
        result["loss"] = self.args.distill_weight * result.get("distill", 0.0) + self.args.data_weight * result.get("data", 0.0)
        return result

    # state ---------------------------------------------------------------------------
    def state(self, identity: dict[str, Any], recipe: dict[str, Any], loss_before: dict[str, float]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            **identity,
            "recipe": recipe,
            "step": self.step,
            "trainable": {name: p.detach().cpu().clone() for name, p in self.named},
            "optimizer": self.optimizer.state_dict(),
            "ema": {name: v.cpu().clone() for name, v in self.ema.items()},
            "rng": {"batches": self.generator.get_state(), "torch": torch.get_rng_state()},
            "losses": [list(row) for row in self.losses],
            "loss_before": dict(loss_before),
            "seconds": self.seconds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        names = [name for name, _ in self.named]
        if sorted(state["trainable"]) != sorted(names):
            raise FinetuneError("checkpoint's trainable values do not match this model's")
        with torch.no_grad():
            for name, p in self.named:
                value = state["trainable"][name]
                if value.shape != p.shape:
                    raise FinetuneError(f"checkpoint's {name} has shape {tuple(value.shape)}, the model's {tuple(p.shape)}")
                p.copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema = {name: v.to(self.device) for name, v in state["ema"].items()}
        self.generator.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = int(state["step"])
        self.losses = [list(row) for row in state["losses"]]
        self.seconds = float(state["seconds"])

    def use_ema(self) -> None:
        with torch.no_grad():
            for name, p in self.named:
                if name in self.ema:
                    p.copy_(self.ema[name])


# ----------------------------------------------------------------------------- outputs


def plot_tsm(values: dict[str, list[float]], path: Path) -> None:
    """p[t] against SNN time step t: one thin line per site (coloured by depth), their mean in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = list(values)
    steps = np.arange(1, len(values[sites[0]]) + 1)
    table = np.array([values[s] for s in sites])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    cmap = plt.get_cmap("viridis")
    for i, row in enumerate(table):
        ax.plot(steps, row, color=cmap(i / max(len(sites) - 1, 1)), linewidth=0.8, alpha=0.6)
    ax.plot(steps, table.mean(axis=0), color="black", linewidth=2.5, marker="o", label="mean over layers")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(sites) - 1))
    fig.colorbar(sm, ax=ax, label="spiking layer (execution order)")
    ax.set_xticks(steps)
    ax.set_xlabel("SNN time step t")
    ax.set_ylabel("TSM factor p[t]")
    ax.set_title("Learned temporal-wise spiking mechanism")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the run


def resolve_ann(args: argparse.Namespace, snn: SpikingUNet2DModel) -> SourceModel:
    if args.ann is not None:
        name = args.ann
    else:
        origin = (snn.config.provenance or {}).get("source", {}).get("origin")
        name = origin if origin and Path(origin).exists() else DEFAULT_MODEL
    source = load_source_model(name)
    check_same_source(snn, source, str(args.snn))
    return source


def prepare_output(args: argparse.Namespace) -> None:
    if args.out.resolve() == args.snn.resolve():
        raise FinetuneError("--out must differ from --snn (the input model is never modified)")
    check_output_folder(args.out, CHECKPOINT, args.resume, args.overwrite, "fine-tuning", FinetuneError)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sdm.core.devices import resolve_device

    validate(args)
    device = resolve_device(args.device)
    snn = load_converted(args.snn, device=str(device))
    prepare_output(args)
    try:
        record: CalibrationRecord | None = CalibrationRecord.load(args.snn)
    except CalibrationError:
        record = None
    if args.distill_weight > 0 and args.pool in ("record", "both") and (record is None or record.inputs is None):
        raise FinetuneError(f"{args.snn} has no calibration inputs stored in its record; use --pool trajectories")
    provenance = dict(snn.config.provenance or {})
    identity = {
        "source_fingerprint": provenance.get("source", {}).get("fingerprint"),
        "snn_fingerprint": state_dict_fingerprint(snn.state_dict()),
        "timesteps": snn.timesteps,
    }
    recipe = recipe_of(args)
    checkpoint_path = args.out / CHECKPOINT
    resumed = None
    if args.resume:
        resumed = load_checkpoint(checkpoint_path, CHECKPOINT_FORMAT, "sdm-finetune", FinetuneError)
        check_checkpoint(resumed, checkpoint_path, identity, recipe, args.steps)
    if "scheduler_config" not in provenance:
        raise FinetuneError(f"{args.snn} records no scheduler config in its provenance; re-run sdm-convert with this version")
    schedule = DDPMScheduler.from_config(provenance["scheduler_config"])
    images = load_images(args, snn) if args.data_weight > 0 else None

    source = resolve_ann(args, snn)
    source.unet.to(device)
    started = time.perf_counter()
    pool = build_pool(args, source, record, device) if args.distill_weight > 0 else Pool(*(torch.zeros(0),) * 3)
    pool_seconds = time.perf_counter() - started
    source.unet.to("cpu")

    trainer = Trainer(args, snn, pool, images, schedule, device)
    if resumed is not None:
        trainer.load_state(resumed)
        loss_before = resumed["loss_before"]
        del resumed
    else:
        loss_before = trainer.evaluate()
    first_step = trainer.step
    step_times: list[float] = []
    progress = tqdm(total=args.steps, initial=first_step, desc=f"fine-tuning ({args.train})", unit="step")
    while trainer.step < args.steps:
        begin = time.perf_counter()
        row = trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - begin)
        trainer.seconds += step_times[-1]
        progress.set_postfix(loss=f"{row[1]:.4g}")
        progress.update()
        if args.checkpoint_every and trainer.step % args.checkpoint_every == 0 and trainer.step < args.steps:
            args.out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(trainer.state(identity, recipe, loss_before), checkpoint_path, FinetuneError)
            write_loss_log(trainer.losses, LOSS_COLUMNS, args.out / "loss_log.csv")
    progress.close()

    final_state = trainer.state(identity, recipe, loss_before)
    if trainer.ema:
        trainer.use_ema()
    freeze(snn)
    loss_after = trainer.evaluate()
    snn.register_to_config(provenance={**provenance, "finetune": {"from": str(args.snn), "steps": trainer.step, **recipe}})
    values = tsm_values(snn)
    summary = {
        "snn": str(args.snn),
        "ann": source.describe(),
        "recipe": recipe,
        "steps": trainer.step,
        "resumed_from_step": first_step if args.resume else None,
        "trainable_parameters": sum(p.numel() for p in trainer.params),
        "device": device_name(device),
        "seconds": {
            "distillation_pool": round(pool_seconds, 3),
            "training_total": round(trainer.seconds, 3),
            "training_this_run": round(sum(step_times), 3),
        },
        "seconds_per_step": sum(step_times) / len(step_times) if step_times else None,
        "seconds_per_step_after_first": (sum(step_times[1:]) / (len(step_times) - 1)) if len(step_times) > 1 else None,
        "distillation_inputs": len(pool),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "loss_note": "fp32 losses of the saved model (EMA values if --ema) on fixed inputs: "
                     "evenly spread distillation-pool inputs and the first data images with seeded noise",
        "tsm_mean_per_step": np.mean(np.array(list(values.values())), axis=0).tolist(),
    }
    with atomic_folder(args.out, overwrite=True) as staging:
        save_converted(snn, record, staging)
        (staging / "operations.json").write_text(json.dumps(operations_report(snn), indent=2))
        (staging / "tsm.json").write_text(json.dumps({"timesteps": snn.timesteps, "mean": summary["tsm_mean_per_step"],
                                                      "sites": values}, indent=2))
        plot_tsm(values, staging / "tsm.png")
        write_loss_log(trainer.losses, LOSS_COLUMNS, staging / "loss_log.csv")
        (staging / "finetune.json").write_text(json.dumps(summary, indent=2))
        save_checkpoint(final_state, staging / CHECKPOINT, FinetuneError)
    summary["out"] = str(args.out)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    summary, code = run_reporting_errors("sdm-finetune", lambda: run(args),
                                         f"continue from the last checkpoint with --resume (in {args.out})")
    if code:
        return code
    before, after = summary["loss_before"], summary["loss_after"]
    per_step = summary["seconds_per_step"]
    print(f"wrote {summary['out']}: {summary['steps']} steps ({args.train}), loss {before['loss']:.5g} -> {after['loss']:.5g}"
          + (f", {per_step:.3f} s/step on {summary['device']}" if per_step else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every training loop here shares: the resumable loop and trainer state, atomic,
untrusted-safe checkpoints, loss logs, EMA, and a one-line description of the hardware a run used.

Used by `sdm-train` (pretrained/train.py, source ANNs) and `sdm-finetune` (converter/finetune/run.py,
converted SNNs), so both resume, log and describe themselves the same way.
"""

from __future__ import annotations

import csv
import io
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import atomic
from .errors import SdmError
from .untrusted import load_weights_only


def save_checkpoint(state: dict[str, Any], path: Path, error: type[SdmError] = SdmError) -> None:
    """Write atomically (an interruption leaves the previous checkpoint)."""
    atomic.torch_save(state, path, error)


def check_output_folder(out: Path, checkpoint: str, resume: bool, overwrite: bool, what: str,
                        error: type[SdmError] = SdmError) -> None:
    """Refuse an output that would lose work: a file, a folder with a run in it (without --resume
    or --overwrite), or --resume with nothing to resume."""
    if out.exists() and not out.is_dir():
        raise error(f"output path exists and is not a folder: {out}")
    if resume:
        if not (out / checkpoint).is_file():
            raise error(f"nothing to resume: no {checkpoint} in {out}")
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / checkpoint).is_file():
            raise error(f"{out} holds a {what} checkpoint: pass --resume to continue it or --overwrite to start over")
        raise error(f"output folder exists and is not empty: {out} (pass --overwrite)")
    atomic.probe_writable(out, error)


def load_checkpoint(path: Path, expected_format: str, what: str, error: type[SdmError] = SdmError) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True and check that it is one of ours, of the expected kind."""
    if not path.is_file():
        raise error(f"nothing to resume: no {path.name} in {path.parent}")
    state = load_weights_only(path, error, prefix="corrupt checkpoint ")
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise error(f"{path} is not an {what} checkpoint")
    return state


def write_loss_log(rows: Iterable[list[float]], header: list[str], path: Path) -> None:
    """CSV with an integer first column (the step), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for step, *values in rows:
        writer.writerow([int(step), *(f"{v:.8g}" for v in values)])
    atomic.write_text(path, buffer.getvalue())


@contextmanager
def inference_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the block; the module's own training flag comes back in `finally`."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], named: Iterable[tuple[str, torch.Tensor]], decay: float, step: int) -> None:
    """EMA with the usual warm-up, min(decay, (1 + step) / (10 + step)), so early values do not linger."""
    rate = min(decay, (1 + step) / (10 + step))
    for name, value in named:
        ema[name].lerp_(value.detach(), 1 - rate)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def check_recipe(state: dict[str, Any], path: Path, recipe: dict[str, Any], steps: int,
                 error: type[SdmError] = SdmError) -> None:
    """Refuse to resume a checkpoint made with other options, or one already past `--steps`."""
    for key, value in recipe.items():
        if state["recipe"].get(key) != value:
            raise error(f"checkpoint {path} was made with --{key.replace('_', '-')} {state['recipe'].get(key)}, "
                        f"this run has {value} (resume with the same options)")
    if state["step"] > steps:
        raise error(f"checkpoint {path} is at step {state['step']}, beyond --steps {steps}")


class ResumableTrainer:
    """What both trainers share: the optimiser, an EMA of the trained values, seeded batches, the
    step count, loss rows and time, and the checkpoint state of all of it (so a resumed run
    continues bit for bit). Subclasses define `train_step` and their own extra state."""

    def __init__(self, named: list[tuple[str, torch.Tensor]], optimizer: torch.optim.Optimizer, ema_decay: float,
                 seed: int, device: torch.device, error: type[SdmError] = SdmError) -> None:
        self.named, self.optimizer, self.ema_decay, self.device, self.error = named, optimizer, ema_decay, device, error
        self.ema = {name: p.detach().clone() for name, p in named} if ema_decay > 0 else {}
        self.generator = torch.Generator().manual_seed(seed)
        self.step, self.seconds = 0, 0.0
        self.losses: list[list[float]] = []

    def train_step(self) -> list[float]:
        """One optimiser step; returns its loss row, [step, loss, ...]."""
        raise NotImplementedError

    def optimise(self, loss: torch.Tensor, grad_clip: float) -> torch.Tensor:
        """Backward, clip (0: off) and step; a non-finite loss is refused by name. Returns the gradient norm."""
        if not torch.isfinite(loss):
            raise self.error(f"loss became {float(loss.detach())} at step {self.step + 1}; lower --lr or use --grad-clip")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.named], grad_clip if grad_clip > 0 else float("inf"))
        self.optimizer.step()
        return grad_norm

    def finish_step(self, values: Iterable[float]) -> list[float]:
        """Count the step, update the EMA, and log `[step, *values]`."""
        self.step += 1
        if self.ema:
            ema_update(self.ema, self.named, self.ema_decay, self.step)
        row = [float(self.step), *(float(v) for v in values)]
        self.losses.append(row)
        return row

    def common_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "ema": {name: v.cpu().clone() for name, v in self.ema.items()},
            "rng": {"batches": self.generator.get_state(), "torch": torch.get_rng_state()},
            "losses": [list(row) for row in self.losses],
            "seconds": self.seconds,
        }

    def load_common_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema = {name: v.to(self.device) for name, v in state["ema"].items()}
        self.generator.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.losses = [list(row) for row in state["losses"]]


def run_steps(trainer: ResumableTrainer, total_steps: int, checkpoint_every: int, checkpoint: Callable[[], None],
              desc: str, time_limit: float = 0.0) -> list[float]:
    """The resumable loop both trainers run: steps up to `total_steps`, timed (device-synchronised),
    with `checkpoint()` every `checkpoint_every` steps (0: none; the caller writes the last one).
    A `time_limit` (seconds, 0: none) ends the run early once the training time summed over all
    runs of this checkpoint reaches it: a wall-clock budget whose step count the outputs record."""
    step_times: list[float] = []
    progress = tqdm(total=total_steps, initial=trainer.step, desc=desc, unit="step")
    while trainer.step < total_steps and not (time_limit and trainer.seconds >= time_limit):
        begin = time.perf_counter()
        row = trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        step_times.append(time.perf_counter() - begin)
        trainer.seconds += step_times[-1]
        progress.set_postfix(loss=f"{row[1]:.4g}")
        progress.update()
        if checkpoint_every and trainer.step % checkpoint_every == 0 and trainer.step < total_steps:
            checkpoint()
    progress.close()
    return step_times

"""What every training loop here shares: atomic, untrusted-safe checkpoints, loss logs, EMA,
the diffusion data target, and a one-line description of the hardware a run used.

Used by `sdm-train` (pretrained/train.py, source ANNs) and `sdm-finetune` (converter/finetune.py,
converted SNNs), so both resume, log and describe themselves the same way.
"""

from __future__ import annotations

import csv
import io
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

from sdm.core import atomic
from sdm.core.errors import SdmError
from sdm.core.untrusted import load_weights_only


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


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], named: Iterable[tuple[str, torch.Tensor]], decay: float, step: int) -> None:
    """EMA with the usual warm-up, min(decay, (1 + step) / (10 + step)), so early values do not linger."""
    rate = min(decay, (1 + step) / (10 + step))
    for name, value in named:
        ema[name].lerp_(value.detach(), 1 - rate)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the [-1, 1] range diffusion models are trained on."""
    return images.float() / 127.5 - 1.0


def data_target(schedule: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under the scheduler's prediction type."""
    kind = schedule.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return schedule.get_velocity(x0, noise, t)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"

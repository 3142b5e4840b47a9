"""Checks the settings dataclasses of every command share, importable without torch.

A command's settings are validated when they are built (`__post_init__`), before any model
loads, so a bad option costs nothing: ranges, comma lists, and an output folder proven
writable by creating and removing a probe beside it. Every failure is one `SdmError` line.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdm.core.errors import SdmError

SAMPLERS = ("ddim", "ddpm", "dpm")


def require(condition: bool, message: str, error: type[SdmError] = SdmError) -> None:
    """Raise `error(message)` unless `condition` holds."""
    if not condition:
        raise error(message)


def at_least(flag: str, value: float, minimum: float, error: type[SdmError] = SdmError) -> None:
    require(value >= minimum, f"{flag} must be >= {minimum:g}, got {value}", error)


def positive(flag: str, value: float, error: type[SdmError] = SdmError) -> None:
    require(value > 0 and math.isfinite(value), f"{flag} must be > 0, got {value}", error)


def in_unit_interval(flag: str, value: float, error: type[SdmError] = SdmError) -> None:
    """0 <= value < 1 (decays, dropout)."""
    require(0 <= value < 1, f"{flag} must be in [0, 1), got {value}", error)


def parse_list(text: str, flag: str, kind: type = int, error: type[SdmError] = SdmError) -> list:
    """A comma list of numbers (`4,8`), empty items skipped; anything else is a one-line error."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        word = "integers" if kind is int else "numbers"
        raise error(f"{flag} must be comma-separated {word}, got {text!r}") from None


def probe_writable(out: Path, error: type[SdmError] = SdmError) -> None:
    """Prove that `out` can be created: make and remove a probe in its nearest existing parent.

    Nothing is left behind; a read-only file system, a missing permission or a parent that is a
    file is refused now instead of after the work.
    """
    out = Path(out)
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"cannot write {out}: {parent} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{out.name}.probe.", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"cannot write {out}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class SamplingSettings:
    """How a comparison samples: the same noises, sampler and steps for every model."""

    num_samples: int
    steps: int
    seed: int = 0
    sampler: str = "ddim"
    batch_size: int = 16
    device: Any = "cpu"  # a device name, or the torch.device it resolved to

    def __post_init__(self) -> None:
        at_least("--num-samples", self.num_samples, 1)
        at_least("--steps", self.steps, 1)
        at_least("--batch-size", self.batch_size, 1)
        require(self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """The options both trainers share (`sdm-train`, `sdm-finetune`), checked the same way."""

    out: Path
    steps: int
    batch_size: int
    lr: float
    ema: float
    checkpoint_every: int
    grad_clip: float = 1.0
    bf16: bool = False
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"

    def check_training(self, error: type[SdmError]) -> None:
        at_least("--steps", self.steps, 1, error)
        at_least("--batch-size", self.batch_size, 1, error)
        positive("--lr", self.lr, error)
        in_unit_interval("--ema", self.ema, error)
        at_least("--grad-clip", self.grad_clip, 0, error)
        at_least("--checkpoint-every", self.checkpoint_every, 0, error)
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other", error)
        probe_writable(self.out, error)

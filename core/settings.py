"""Checks the settings dataclasses of every command share, importable without torch.

A command's settings are validated when they are built (`__post_init__`), before any model
loads, so a bad option costs nothing: ranges, comma lists, and an output folder proven
writable (core.atomic.probe_writable). Every failure is one `SdmError` line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .atomic import probe_writable
from .errors import SdmError

SAMPLERS = ("ddim", "ddpm", "dpm")
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when present, else cpu)"


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


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    """A JSON object option (`--policy '{"negative_lobe": "relu"}'`), or a one-line error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SdmError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SdmError(f"{flag} must be a JSON object, got {text!r}")
    return value


@dataclass(frozen=True)
class SamplingSettings:
    """How a comparison samples: the same noises, sampler and steps for every model."""

    num_samples: int
    steps: int
    seed: int = 0
    sampler: str = "ddim"
    batch_size: int = 16
    device: Any = "cpu"  # a device name, or the torch.device it resolved to
    tf32: bool = False  # see core.devices.set_tf32: off keeps ANN and SNN on the same float32 arithmetic
    # The ANN's eps on the SNN's trajectory costs one more UNet call per step: measure it on the first
    # samples only (whole batches) when thousands are sampled for FID. None: on every sample.
    eps_error_samples: int | None = None

    def __post_init__(self) -> None:
        at_least("--num-samples", self.num_samples, 1)
        if self.eps_error_samples is not None:
            at_least("--eps-error-samples", self.eps_error_samples, 1)
        at_least("--steps", self.steps, 1)
        at_least("--batch-size", self.batch_size, 1)
        require(self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """The options both trainers share (`sdm-train`, `sdm-finetune`), checked the same way."""

    # Options whose change would change the result: a resumed run must use the checkpoint's values.
    RECIPE_KEYS: ClassVar[tuple[str, ...]] = ()
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
    time_limit: float = 0.0

    def recipe(self) -> dict[str, Any]:
        """The options a checkpoint records and a resumed run must match (paths as strings)."""
        return {key: str(value) if isinstance(value := getattr(self, key), Path) else value
                for key in self.RECIPE_KEYS}

    def check_training(self, error: type[SdmError]) -> None:
        at_least("--steps", self.steps, 1, error)
        at_least("--batch-size", self.batch_size, 1, error)
        positive("--lr", self.lr, error)
        in_unit_interval("--ema", self.ema, error)
        at_least("--grad-clip", self.grad_clip, 0, error)
        at_least("--checkpoint-every", self.checkpoint_every, 0, error)
        at_least("--time-limit", self.time_limit, 0, error)
        require(not (self.resume and self.overwrite), "--resume and --overwrite contradict each other", error)
        probe_writable(self.out, error)

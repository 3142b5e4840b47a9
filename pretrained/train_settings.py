"""What one `sdm-train` run does: the settings dataclass, validated when built (before any data
or model loads), and the recipe a resumed run must repeat. Importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import SdmError
from ..core.settings import TrainingSettings, at_least, in_unit_interval, parse_list, require

ACTIVATIONS = ("silu", "relu")
RESOLUTIONS = (32, 64)
RESIZE_POLICIES = ("crop", "none")


class TrainError(SdmError):
    """Bad options, an unusable dataset, or a checkpoint that belongs to another model or run."""


@dataclass(frozen=True, kw_only=True)
class TrainSettings(TrainingSettings):
    """Options of one training run (README "Source models" says what each one does)."""

    RECIPE_KEYS = ("data", "data_limit", "resize", "batch_size", "lr", "warmup", "ema", "grad_clip", "bf16", "seed", "flip",
                   "init")

    data: Path
    split: str | None = None
    data_limit: int | None = None
    resize: str = "crop"
    resolution: int = 32
    channels: int = 64
    channel_mult: str = "1,2,2,2"
    layers_per_block: int = 2
    attention_resolutions: str = "16"
    activation: str | None = None
    init: str | None = None
    dropout: float = 0.1
    warmup: int = 500
    flip: bool = True
    sample_count: int = 16
    sample_steps: int = 50

    def __post_init__(self) -> None:
        e = TrainError
        at_least("--warmup", self.warmup, 0, e)
        at_least("--channels", self.channels, 1, e)
        at_least("--layers-per-block", self.layers_per_block, 1, e)
        if self.data_limit is not None:
            at_least("--data-limit", self.data_limit, 1, e)
        in_unit_interval("--dropout", self.dropout, e)
        at_least("--sample-count", self.sample_count, 1, e)
        at_least("--sample-steps", self.sample_steps, 1, e)
        require(self.resolution in RESOLUTIONS, f"--resolution must be one of {RESOLUTIONS}, got {self.resolution}", e)
        require(self.resize in RESIZE_POLICIES, f"--resize must be one of {', '.join(RESIZE_POLICIES)}", e)
        require(self.activation in (None, *ACTIVATIONS), f"--activation must be one of {', '.join(ACTIVATIONS)}", e)
        self.channel_multipliers()
        self.attention_sizes()
        self.check_training(e)

    def channel_multipliers(self) -> list[int]:
        return parse_list(self.channel_mult, "--channel-mult", int, TrainError)

    def attention_sizes(self) -> set[int]:
        return set(parse_list(self.attention_resolutions, "--attention-resolutions", int, TrainError))


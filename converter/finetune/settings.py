"""What one `sdm-finetune` run does: the settings dataclass, validated when built (before any
model loads), and the recipe a resumed run must repeat. Importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import SdmError
from ...core.settings import TrainingSettings, at_least, positive, require

METHODS = ("tsm", "qat")
TRAINABLE = ("p", "thresholds", "all")
QAT_WEIGHTS = ("none", "lora", "all")
POOLS = ("record", "trajectories", "both")
DEFAULT_POOL = {"tsm": "record", "qat": "trajectories"}
DEFAULT_REFRESH = {"tsm": 0, "qat": 50}
STEP_WEIGHTINGS = ("uniform", "sensitivity")
DEFAULT_STEP_WEIGHTING = {"tsm": "uniform", "qat": "sensitivity"}
# eps: the ANN's eps on x_t of its own trajectories (the pool); sample: the ANN's final sample from
# the same noise, back-propagated through the twin's whole unrolled trajectory (fresh noises each step).
DISTILL_TARGETS = ("eps", "sample")
SAMPLE_LOSSES = ("mse", "psnr")  # psnr: the mean over samples of log MSE (each sample's PSNR counts alike)
SAMPLE_INPUTS = "noises"  # the `pool` a sample-target run records: fresh seeded noises every step


class FinetuneError(SdmError):
    """Bad options, an unusable folder or dataset, or a checkpoint that belongs to another run."""


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings(TrainingSettings):
    """Options of one fine-tuning run (README "TSM fine-tuning" says what each one does)."""

    RECIPE_KEYS = ("method", "train", "weights", "rank", "lr", "weight_lr", "batch_size", "seed", "distill_weight",
                   "data_weight", "data", "data_limit", "bf16", "ema", "grad_clip", "pool", "trajectories",
                   "trajectory_steps", "refresh_every", "eval_size", "step_weighting", "sensitivity_samples", "distill_target",
                   "sample_loss", "spike_penalty")

    snn: Path
    ann: str | None = None
    method: str = "tsm"
    train: str = "p"
    weights: str = "none"
    rank: int = 4
    weight_lr: float = 1e-4
    distill_weight: float = 1.0
    data_weight: float = 0.0
    data: Path | None = None
    data_limit: int = 5000
    pool: str | None = None  # None: the method's default (DEFAULT_POOL)
    trajectories: int = 8
    trajectory_steps: int = 10
    refresh_every: int | None = None  # None: the method's default (DEFAULT_REFRESH)
    eval_size: int = 16
    step_weighting: str | None = None  # None: the method's default (DEFAULT_STEP_WEIGHTING)
    sensitivity_samples: int = 8
    distill_target: str = "eps"
    sample_loss: str = "mse"
    spike_penalty: float = 0.0  # weight of the twin's spike rate in the QAT loss (converter/finetune/qat.py SpikeCounter)

    def __post_init__(self) -> None:
        e = FinetuneError
        require(self.method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {self.method!r}", e)
        require(self.distill_target in DISTILL_TARGETS,
                f"--distill-target must be one of {', '.join(DISTILL_TARGETS)}, got {self.distill_target!r}", e)
        require(self.sample_loss in SAMPLE_LOSSES,
                f"--sample-loss must be one of {', '.join(SAMPLE_LOSSES)}, got {self.sample_loss!r}", e)
        require(self.sample_loss == "mse" or self.distill_target == "sample",
                "--sample-loss is the loss of --distill-target sample", e)
        if self.distill_target == "sample":
            self._resolve_sample_target(e)
        if self.pool is None:
            object.__setattr__(self, "pool", DEFAULT_POOL[self.method])
        if self.refresh_every is None:
            object.__setattr__(self, "refresh_every", DEFAULT_REFRESH[self.method])
        if self.step_weighting is None:
            object.__setattr__(self, "step_weighting", DEFAULT_STEP_WEIGHTING[self.method])
        require(self.step_weighting in STEP_WEIGHTINGS,
                f"--step-weighting must be one of {', '.join(STEP_WEIGHTINGS)}, got {self.step_weighting!r}", e)
        at_least("--sensitivity-samples", self.sensitivity_samples, 1, e)
        require(self.method == "tsm" or self.train == "p",
                "--train is for --method tsm: --method qat trains thresholds and bias corrections (plus --weights)", e)
        require(self.weights in QAT_WEIGHTS, f"--weights must be one of {', '.join(QAT_WEIGHTS)}, got {self.weights!r}", e)
        require(self.method == "qat" or self.weights == "none",
                "--weights is for --method qat (TSM trains weights with --train all)", e)
        require(self.spike_penalty >= 0 and math.isfinite(self.spike_penalty),
                f"--spike-penalty must be >= 0 and finite, got {self.spike_penalty} (a negative weight would reward spikes)", e)
        require(self.method == "qat" or self.spike_penalty == 0,
                "--spike-penalty is for --method qat: it penalises the quantised twin's counts in closed form through "
                "their straight-through gradient, and TSM trains the step simulation, which has no twin once p[t] "
                "scales its steps (and single-spike neurons pass no gradient through their spikes): QAT with the "
                "penalty first, then TSM on top", e)
        at_least("--rank", self.rank, 1, e)
        positive("--weight-lr", self.weight_lr, e)
        at_least("--refresh-every", self.refresh_every, 0, e)
        require(self.refresh_every == 0 or self.pool != "record",
                "--refresh-every replaces fresh trajectories: it needs --pool trajectories or both", e)
        require(self.train in TRAINABLE, f"--train must be one of {', '.join(TRAINABLE)}, got {self.train!r}", e)
        require(self.pool in POOLS or self.pool == SAMPLE_INPUTS, f"--pool must be one of {', '.join(POOLS)}, got {self.pool!r}", e)
        at_least("--distill-weight", self.distill_weight, 0, e)
        at_least("--data-weight", self.data_weight, 0, e)
        require(self.distill_weight > 0 or self.data_weight > 0,
                "--distill-weight and --data-weight are both 0: nothing to train on", e)
        require(self.data_weight == 0 or self.data is not None, "--data-weight > 0 needs --data (a zip or folder of images)", e)
        require(self.data is None or self.data_weight > 0, "--data given but --data-weight is 0 (pass --data-weight > 0)", e)
        at_least("--data-limit", self.data_limit, 1, e)
        at_least("--trajectories", self.trajectories, 1, e)
        at_least("--trajectory-steps", self.trajectory_steps, 1, e)
        at_least("--eval-size", self.eval_size, 1, e)
        require(Path(self.out).resolve() != Path(self.snn).resolve(),
                "--out must differ from --snn (the input model is never modified)", e)
        self.check_training(e)

    def _resolve_sample_target(self, e: type[FinetuneError]) -> None:
        """The sample target draws fresh noises each step and charges every step its effect on the
        final sample itself: the eps pool's options and the step weighting do not apply."""
        require(self.method == "qat", "--distill-target sample is for --method qat (it unrolls the twin's trajectory, "
                                      "one pass per DDIM step; TSM would take T)", e)
        for option, value in (("--pool", self.pool), ("--refresh-every", self.refresh_every),
                              ("--step-weighting", self.step_weighting)):
            require(value is None, f"{option} chooses or weights eps-distillation inputs; --distill-target sample "
                                   f"distils final samples from fresh noises (drop {option})", e)
        object.__setattr__(self, "pool", SAMPLE_INPUTS)
        object.__setattr__(self, "refresh_every", 0)
        object.__setattr__(self, "step_weighting", "uniform")


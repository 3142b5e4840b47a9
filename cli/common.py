"""What every command's parser shares: the help format, option groups, and how a command runs.

Importable without torch: a command module imports only this, argparse and the light settings
modules at its top, and its library after parsing, so `--help` and option errors are instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

from ..core.atomic import ensure_free_target
from ..core.errors import run_reporting_errors
from ..core.settings import DEVICE_HELP, SAMPLERS, SamplingSettings
from ..pretrained.zoo import DEFAULT_MODEL

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class SamplingRun:
    """What every command that samples an ANN and writes a report folder takes. The output is
    proven writable when the settings are built, before any model loads."""

    ann: str
    sampling: SamplingSettings
    out: Path
    overwrite: bool = False
    simulation: str = "steps"

    def __post_init__(self) -> None:
        ensure_free_target(self.out, self.overwrite)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default; descriptions keep their line breaks.

    Nothing is added where there is no value to show: required options, options whose absence
    means "not given" (None), and flags that are off unless passed.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or any(action.default is value for value in (None, False, argparse.SUPPRESS)):
            return action.help or ""
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An option error is one line, `prog: error: message (see prog --help)`, exit 2, like every
    other refusal: argparse's usage block before it would bury the line that names the problem.
    Sub-commands' parsers are of this class too (argparse makes them of their parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    return CommandParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_subcommand(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help=f"torch device: {DEVICE_HELP}")


def add_output_arguments(parser: argparse.ArgumentParser, what: str = "output folder", required: bool = True) -> None:
    parser.add_argument("--out", type=Path, required=required, default=None, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def add_ann_argument(parser: argparse.ArgumentParser, help: str = "source ANN: a path or an embedded model name") -> None:
    parser.add_argument("--ann", default=DEFAULT_MODEL, help=help)


def add_sampling_arguments(parser: argparse.ArgumentParser, *, num_samples: int, steps: int, batch_size: int) -> None:
    """The sampling options every evaluation command shares, with that command's defaults."""
    parser.add_argument("--num-samples", type=int, default=num_samples, help="images per model")
    parser.add_argument("--steps", type=int, default=steps, help="sampler steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddim (eta 0), ddpm, dpm (DPM-Solver++)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
    add_device_argument(parser)
    parser.add_argument("--tf32", action="store_true",
                        help="let CUDA round float32 convolutions and matmuls through TF32 (off: paired comparisons "
                             "want the same float32 arithmetic in ANN and SNN; the report records it)")


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, ema: float,
                           checkpoint_every: int, checkpoint: str, seed_help: str) -> None:
    """The options both trainers share (core.settings.TrainingSettings), with each trainer's defaults."""
    parser.add_argument("--steps", type=int, default=steps, help="total optimiser steps")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="inputs per step")
    parser.add_argument("--lr", type=float, default=lr, help="learning rate (after any warm-up)")
    parser.add_argument("--ema", type=float, default=ema,
                        help="EMA decay of the trained values, 0 = off (the saved model uses the EMA values)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward and backward (CUDA)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--checkpoint-every", type=int, default=checkpoint_every,
                        help=f"write OUT/{checkpoint} every N steps (0: only at the end)")
    parser.add_argument("--time-limit", type=float, default=0.0, metavar="SECONDS",
                        help="stop once this many seconds of training have run (summed over resumed runs; "
                             "at most --steps steps; 0: no limit): a budget instead of a step count")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue from OUT/{checkpoint} (same options, possibly more --steps)")
    parser.add_argument("--overwrite", action="store_true", help="start over in a non-empty output folder")
    add_device_argument(parser)


def add_simulation_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """--simulation: steps | closed-form | both (checked by converter.simulation.check_choice)."""
    parser.add_argument("--simulation", default="steps", help=help)


def print_equivalence(eq: dict, closed_form_psnr_db: float, indent: str) -> None:
    """The equivalence section of a `--simulation both` run, in one line."""
    print(f"{indent}equivalence: counts differ {eq['count_differs_fraction']:.2e} (ties "
          f"{eq['count_differs_ties_fraction']:.2e}), closed-form PSNR {closed_form_psnr_db:.2f} dB, largest eps rel. "
          f"difference {eq['largest_eps_relative_difference']:.2e}, closed-form/steps time "
          f"{eq['closed_form_over_steps_time']:.3f}")


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(num_samples=args.num_samples, steps=args.steps, seed=args.seed, sampler=args.sampler,
                            batch_size=args.batch_size, device=args.device, tf32=args.tf32,
                            eps_error_samples=getattr(args, "eps_error_samples", None))


def run_command(prog: str, action: Callable[[], T], report: Callable[[T], None] | None = None,
                interrupted_hint: str = "") -> int:
    """Run a command's settings + library call: a user error is one line `prog: error: ...`, exit 2;
    SIGINT/SIGTERM end in one line with 130/143 (core.errors). `report` prints a result that is not None
    (None: a torchrun rank other than 0, which writes nothing)."""
    result, code = run_reporting_errors(prog, action, interrupted_hint)
    if code == 0 and report is not None and result is not None:
        report(result)
    return code

"""`python eval/sweep.py`: threshold calibration sweeps on a saved calibration record
(method x percentile x T x threshold scale); sweep.csv, sweep.md, sweep.json and plots."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..converter.allocator import retain_freed_memory
from ..converter.spiking.policy import THRESHOLD_METHODS
from ..core.settings import parse_json_object, parse_list
from .common import (SamplingRun, add_ann_argument, add_output_arguments, add_sampling_arguments,
                     add_simulation_argument, make_parser, run_command, sampling_settings)

PROG = "sweep.py"


@dataclass(frozen=True, kw_only=True)
class SweepSettings(SamplingRun):
    """The grid of policies to convert from one calibration record and measure against the ANN."""

    record: Path
    methods: tuple[str, ...]
    percentiles: tuple[float, ...]
    timesteps: tuple[int, ...]
    scales: tuple[float, ...]
    policy: dict
    levels: tuple[str, ...] = ("hybrid",)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SweepSettings":
        extra = parse_json_object(args.policy, "--policy")
        return cls(ann=args.ann, record=args.record, methods=tuple(m for m in args.methods.split(",") if m.strip()),
                   percentiles=tuple(parse_list(args.percentiles, "--percentiles", float)),
                   timesteps=tuple(parse_list(args.timesteps, "--timesteps", int)),
                   scales=tuple(parse_list(args.scales, "--scales", float)), policy=extra,
                   sampling=sampling_settings(args), out=args.out, overwrite=args.overwrite,
                   simulation=args.simulation, levels=tuple(v.strip() for v in args.levels.split(",") if v.strip()))


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__)
    add_ann_argument(p)
    p.add_argument("--record", type=Path, required=True,
                   help="folder with calibration.json/.safetensors (from sdm-calibrate, or any sdm-convert output)")
    p.add_argument("--levels", default="hybrid", help="comma list of spiking levels: hybrid, residual, full")
    p.add_argument("--methods", default="mse", help=f"comma list of {', '.join(THRESHOLD_METHODS)}")
    p.add_argument("--percentiles", default="99.9", help="comma list, used with the percentile method")
    p.add_argument("--timesteps", default="4", help="comma list of T")
    p.add_argument("--scales", default="1.0", help="comma list of threshold scales (TG)")
    add_simulation_argument(p, "steps, closed-form (quantised twin, ANN cost) or both")
    p.add_argument("--policy", default="{}", help='other conversion options as JSON, e.g. \'{"negative_lobe": "relu"}\'')
    add_sampling_arguments(p, num_samples=8, steps=20, batch_size=16)
    add_output_arguments(p)
    return p


def run(settings: SweepSettings) -> list[dict]:
    # Heavy imports after parsing and validation (fast --help).
    from ..core.devices import resolve_device
    from ..eval.reports.sweeps import SweepGrid, sweep

    grid = SweepGrid(settings.methods, settings.percentiles, settings.timesteps, settings.scales, settings.policy,
                     settings.levels)
    grid.combinations()  # every policy valid before the device or any model
    sampling = replace(settings.sampling, device=resolve_device(settings.sampling.device))
    return sweep(settings.ann, settings.record, grid, sampling, settings.out, settings.overwrite, settings.simulation)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()

    def report(rows: list[dict]) -> None:
        for row in rows:
            print(", ".join(f"{c}={v:.4g}" if isinstance(v, float) else f"{c}={v}" for c, v in row.items()))
        print(f"wrote {args.out}")

    return run_command(PROG, lambda: run(SweepSettings.from_args(args)), report)


if __name__ == "__main__":
    sys.exit(main())

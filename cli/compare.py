"""`python eval/compare.py ann-vs-snn`: the source ANN and converted SNNs, side by side;
`python eval/compare.py ann-fid`: one ANN's FID against reference statistics (model cards, the zoo).

ann-vs-snn writes report.json, report.md, samples_*.npz, grid.png, spike_rates.png (and
metrics_vs_T.png for several SNNs); ann-fid writes report.json, samples_ann.npz and grid.png.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..converter.allocator import retain_freed_memory
from .common import (SamplingRun, add_ann_argument, add_output_arguments, add_sampling_arguments,
                     add_simulation_argument, add_subcommand, make_parser, print_equivalence, run_command,
                     sampling_settings)

PROG = "compare.py"


def add_batches_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=Path, default=None,
                        help="keep every finished sampling batch in this folder: a killed run started again with the "
                             "same options continues where it stopped, with the same samples (FID over thousands of "
                             "samples on a CPU; SNNs with --simulation closed-form)")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = add_subcommand(sub, "ann-vs-snn", "sample ANN and SNN(s) from the same noise and report how close they are")
    add_ann_argument(p)
    p.add_argument("--snn", nargs="+", required=True, type=Path, help="converted model folder(s) made by sdm-convert")
    add_sampling_arguments(p, num_samples=16, steps=20, batch_size=16)
    p.add_argument("--fid-ref", type=Path, default=None, help="reference Inception statistics (.npz from eval.reference_stats)")
    p.add_argument("--fid", action="store_true", help="compute FID between ANN and SNN samples even without --fid-ref")
    add_simulation_argument(p, "steps, closed-form (the quantised twin, ANN cost, no spikes counted) or both (steps "
                               "plus closed form and their agreement in report.json)")
    p.add_argument("--coding", default="rate",  # checked by converter.spiking.delta.check_coding
                   help="how the steps simulation sends spikes: rate (each evaluation all its spikes) or delta (each "
                        "neuron the change against the previous denoising step: the same samples, fewer events)")
    p.add_argument("--eps-error-samples", type=int, default=None,
                   help="measure the per-step eps error (the ANN evaluated on the SNN's trajectory, one more UNet call "
                        "per step) on the first N samples only, rounded up to whole batches (default: every sample; "
                        "FID runs over thousands of samples take half the time with e.g. 256)")
    add_batches_argument(p)
    add_output_arguments(p)
    f = add_subcommand(sub, "ann-fid", "sample one ANN and measure its FID against reference statistics")
    add_ann_argument(f, "ANN: a path or an embedded model name")
    f.add_argument("--fid-ref", type=Path, required=True, help="reference Inception statistics (.npz from eval.reference_stats)")
    add_sampling_arguments(f, num_samples=5000, steps=100, batch_size=64)
    add_batches_argument(f)
    add_output_arguments(f)
    r = add_subcommand(sub, "frontier", "PSNR against energy over finished ann-vs-snn reports: table and plots")
    r.add_argument("reports", nargs="+", type=Path, help="ann-vs-snn output folders (or their report.json)")
    add_output_arguments(r)
    return parser


@dataclass(frozen=True, kw_only=True)
class CompareSettings(SamplingRun):
    """`ann-vs-snn` (the SNN folders, FID optional) or `ann-fid` (the ANN against a reference)."""

    command: str
    fid_ref: Path | None = None
    fid: bool = False
    snn: tuple[Path, ...] = ()
    coding: str = "rate"
    batches: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompareSettings":
        return cls(command=args.command, ann=args.ann, sampling=sampling_settings(args), out=args.out,
                   overwrite=args.overwrite, fid_ref=args.fid_ref, fid=getattr(args, "fid", False),
                   snn=tuple(getattr(args, "snn", ())), simulation=getattr(args, "simulation", "steps"),
                   coding=getattr(args, "coding", "rate"), batches=args.batches)


def run(settings: CompareSettings) -> dict:
    # Heavy imports after parsing and validation (fast --help).
    from ..converter.spiking.delta import check_coding
    from ..converter.spiking.simulation import check_choice
    from ..core.errors import SdmError
    from ..eval.reports.comparison import ann_fid, ann_vs_snn
    from ..eval.runs import distributed
    from ..eval.runs.paired import KEPT_BATCHES_NEED_CLOSED_FORM

    check_choice(settings.simulation)
    check_coding(settings.coding, settings.simulation)
    if settings.batches is not None and settings.command == "ann-vs-snn" and settings.simulation != "closed-form":
        raise SdmError(KEPT_BATCHES_NEED_CLOSED_FORM)
    try:  # under torchrun: join the process group, every rank with the same settings
        sampling = replace(settings.sampling, device=distributed.start(asdict(settings), settings.sampling.device))
        if settings.command == "ann-fid":
            return ann_fid(settings.ann, settings.fid_ref, sampling, settings.out, settings.overwrite, settings.batches)
        return ann_vs_snn(settings.ann, list(settings.snn), sampling, settings.out, settings.overwrite,
                          settings.fid_ref, settings.fid, settings.simulation, settings.coding, settings.batches)
    finally:
        distributed.close()


def print_fid(report: dict) -> None:
    print(f"ANN FID {report['fid']:.2f} ({report['num_samples']} samples, {report['sampler']} "
          f"{report['steps']} steps, reference {report['reference']['source']} {report['reference']['split']})")


def print_runs(report: dict) -> None:
    for run in report["runs"]:
        fid = run["fid"]
        fid_text = f", FID SNN vs ANN {fid['snn_vs_ann']:.2f}" if fid["snn_vs_ann"] is not None else ""
        spikes = "" if run["spike_rate"]["mean"] is None else (
            f", spike rate {run['spike_rate']['mean']:.3f}, energy SNN/ANN {run['energy']['snn_over_ann']:.3f}, "
            f"SNN/QANN {run['energy']['snn_over_qann']:.3f}, SNN/zero-skip QANN {run['energy']['snn_over_qann_zero_skip']:.3f}")
        print(f"{run['label']}: T={run['timesteps']} ({run['simulation']}) PSNR {run['paired']['psnr_db']:.2f} dB, "
              f"eps rel. L2 {run['paired']['eps_rel_l2']:.4f}{spikes}, time SNN/ANN {run['time']['snn_over_ann']:.2f}"
              f"{fid_text}")
        if "equivalence" in run:
            print_equivalence(run["equivalence"], run["closed_form"]["paired"]["psnr_db"], "  ")


def print_frontier(rows: list[dict]) -> None:
    for row in rows:
        print(f"{row['point']}: PSNR {row['psnr_db']:.2f} dB, energy/ANN {row['events_over_ann']:.3f} (events), "
              f"{row['units_over_ann']:.3f} (units x AC)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "frontier":
        from ..eval.reports.frontier import write_frontier

        def report_frontier(rows: list[dict]) -> None:
            print_frontier(rows)
            print(f"wrote {args.out}")

        return run_command(PROG, lambda: write_frontier(args.reports, args.out, args.overwrite), report_frontier)
    retain_freed_memory()
    printer = print_fid if args.command == "ann-fid" else print_runs

    def report(result: dict) -> None:
        printer(result)
        print(f"wrote {args.out}")

    return run_command(PROG, lambda: run(CompareSettings.from_args(args)), report)


if __name__ == "__main__":
    sys.exit(main())

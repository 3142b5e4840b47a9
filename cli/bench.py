"""`python eval/bench.py`: time and memory of the SNN against its ANN, measured side by side.

For each batch size the ANN and the SNN at every T are timed interleaved (ANN, SNN T1, SNN T2,
..., repeated), so machine noise hits all of them alike; medians and spreads are reported with
the ratio SNN / (T x ANN), the dense-simulation floor. Peak memory: CUDA's allocator peak, or on
CPU the peak resident memory of one call in a fresh process above what it held before (VmHWM).
Also times calibration + conversion of the source model at the default calibration size.
"""

from __future__ import annotations

import argparse
import sys

from ..core.settings import parse_list
from .common import (add_ann_argument, add_device_argument, add_output_arguments, add_simulation_argument, make_parser,
                     run_command)

PROG = "bench.py"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__)
    add_ann_argument(p)
    p.add_argument("--timesteps", default="1,2,4,8", help="comma list of SNN time steps T")
    p.add_argument("--batch-sizes", default="1,16", help="comma list of batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per model and batch size")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_device_argument(p)
    p.add_argument("--tf32", action="store_true", help="let CUDA use TF32 for float32 convolutions")
    add_simulation_argument(p, "steps, closed-form (the quantised twin, one pass) or both, timed side by side")
    p.add_argument("--allocator", choices=("retain", "default"), default="retain",
                   help="retain: keep freed buffers mapped (converter/allocator.py), as the sampling commands do; "
                        "default: glibc's own thresholds")
    p.add_argument("--tensor-ops", action="store_true",
                   help="also time each SNN with its sites as plain PyTorch ops (the fallback without a C compiler)")
    add_output_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..eval.reports import benchmark  # the library (and torch) after parsing: --help is instant

    def settings() -> "benchmark.BenchSettings":
        return benchmark.BenchSettings(
            ann=args.ann, timesteps=tuple(parse_list(args.timesteps, "--timesteps")),
            batch_sizes=tuple(parse_list(args.batch_sizes, "--batch-sizes")), repeats=args.repeats,
            threads=args.threads, device=args.device, allocator=args.allocator, tensor_ops=args.tensor_ops,
            out=args.out, overwrite=args.overwrite, simulation=args.simulation, tf32=args.tf32)

    def report(result: dict) -> None:
        print(benchmark.markdown(result))
        print(f"wrote {args.out}")

    return run_command(PROG, lambda: benchmark.bench(settings()), report)


if __name__ == "__main__":
    sys.exit(main())

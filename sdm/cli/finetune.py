"""`sdm-finetune`: learn the TSM factors p[t] of a converted SNN (optionally thresholds, or
everything) by distillation from the source ANN and/or real images; resumable.

When training ends, OUT is a converted-model folder (the format of sdm-convert, loadable by
eval/compare.py and sdm-export) with tsm.json, tsm.png, loss_log.csv, finetune.json and the
final checkpoint.pt (resume it with a larger --steps to train on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdm.cli.common import add_training_arguments, make_parser, run_command
from sdm.converter.allocator import retain_freed_memory
from sdm.converter.finetune_settings import POOLS, TRAINABLE, FinetuneSettings
from sdm.pretrained.zoo import DEFAULT_MODEL

PROG = "sdm-finetune"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument("--snn", type=Path, required=True, help="converted model folder made by sdm-convert")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also holds checkpoint.pt while training)")
    parser.add_argument("--ann", default=None,
                        help="source ANN (path or embedded name; default: the source recorded in the SNN's "
                             f"provenance if it exists here, else {DEFAULT_MODEL})")
    parser.add_argument("--train", choices=TRAINABLE, default="p",
                        help="p: TSM factors only; thresholds: p + neuron thresholds; "
                             "all: p, thresholds, bias currents and all weights")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the ANN distillation loss")
    parser.add_argument("--data-weight", type=float, default=0.0, help="weight of the eps-MSE loss on real images")
    parser.add_argument("--data", type=Path, default=None, help="images for the data loss: a zip or a folder")
    parser.add_argument("--data-limit", type=int, default=5000, help="images read from --data, seeded subset")
    parser.add_argument("--pool", choices=POOLS, default="record",
                        help="distillation inputs: the calibration record's stored x_t, fresh ANN DDIM "
                             "trajectories, or both")
    parser.add_argument("--trajectories", type=int, default=8, help="fresh DDIM trajectories for --pool trajectories|both")
    parser.add_argument("--trajectory-steps", type=int, default=10, help="DDIM steps per fresh trajectory")
    parser.add_argument("--eval-size", type=int, default=16, help="fixed inputs on which losses before/after are measured")
    add_training_arguments(parser, steps=500, batch_size=8, lr=1e-3, ema=0.0, checkpoint_every=100,
                           checkpoint="checkpoint.pt", seed_help="seed of batch sampling and data noise")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    from sdm.converter.finetune import finetune  # heavy: after parsing (fast --help)

    def report(summary: dict) -> None:
        before, after = summary["loss_before"], summary["loss_after"]
        per_step = summary["seconds_per_step"]
        print(f"wrote {summary['out']}: {summary['steps']} steps ({args.train}), loss {before['loss']:.5g} -> "
              f"{after['loss']:.5g}" + (f", {per_step:.3f} s/step on {summary['device']}" if per_step else ""))

    return run_command(PROG, lambda: finetune(FinetuneSettings(**vars(args))), report,
                       f"continue from the last checkpoint with --resume (in {args.out})")


if __name__ == "__main__":
    sys.exit(main())

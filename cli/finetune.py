"""`sdm-finetune`: fine-tune a converted SNN by distillation from the source ANN and/or real
images; resumable. --method tsm (default): learn TSM factors p[t] (optionally thresholds, or
everything) on the step simulation; --method qat: quantisation-aware training of the quantised
twin, one UNet pass per step (thresholds, bias corrections, optionally weights).

When training ends, OUT is a converted-model folder (the format of sdm-convert, loadable by
eval/compare.py and sdm-export) with loss_log.csv, finetune.json, the final checkpoint.pt (resume
it with a larger --steps to train on) and, for TSM, tsm.json and tsm.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..converter.allocator import retain_freed_memory
from ..converter.finetune.settings import (DISTILL_TARGETS, METHODS, POOLS, QAT_WEIGHTS, SAMPLE_LOSSES, STEP_WEIGHTINGS,
                                           TRAINABLE, FinetuneSettings)
from ..pretrained.zoo import DEFAULT_MODEL
from .common import add_training_arguments, make_parser, run_command

PROG = "sdm-finetune"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument("--snn", type=Path, required=True, help="converted model folder made by sdm-convert")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also holds checkpoint.pt while training)")
    parser.add_argument("--ann", default=None,
                        help="source ANN (path or embedded name; default: the source recorded in the SNN's "
                             f"provenance if it exists here, else {DEFAULT_MODEL})")
    parser.add_argument("--method", choices=METHODS, default="tsm",
                        help="tsm: learn TSM factors p[t] on the step simulation; qat: quantisation-aware training "
                             "of the quantised twin in closed form (one pass per step): thresholds as LSQ step "
                             "sizes, bias corrections and --weights")
    parser.add_argument("--train", choices=TRAINABLE, default="p",
                        help="p: TSM factors only; thresholds: p + neuron thresholds; "
                             "all: p, thresholds, bias currents and all weights")
    parser.add_argument("--weights", choices=QAT_WEIGHTS, default="none",
                        help="--method qat: also train the weights, all of them or low-rank adapters merged at the end")
    parser.add_argument("--rank", type=int, default=4, help="rank of the adapters of --weights lora")
    parser.add_argument("--weight-lr", type=float, default=1e-4,
                        help="--method qat: Adam learning rate of weights or adapters (--lr is the thresholds' and "
                             "bias corrections')")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the ANN distillation loss")
    parser.add_argument("--data-weight", type=float, default=0.0, help="weight of the eps-MSE loss on real images")
    parser.add_argument("--data", type=Path, default=None, help="images for the data loss: a zip or a folder")
    parser.add_argument("--data-limit", type=int, default=5000, help="images read from --data, seeded subset")
    parser.add_argument("--pool", choices=POOLS, default=None,
                        help="distillation inputs: the calibration record's stored x_t (tsm's default), fresh ANN "
                             "DDIM trajectories (qat's default), or both")
    parser.add_argument("--trajectories", type=int, default=8, help="fresh DDIM trajectories for --pool trajectories|both")
    parser.add_argument("--trajectory-steps", type=int, default=10, help="DDIM steps per fresh trajectory")
    parser.add_argument("--refresh-every", type=int, default=None,
                        help="every N steps replace the pool's trajectories by fresh ones (new seeds); 0: never "
                             "(default: 50 for qat, 0 for tsm)")
    parser.add_argument("--step-weighting", choices=STEP_WEIGHTINGS, default=None,
                        help="how distillation inputs are drawn: uniform, or in proportion to how much an eps error "
                             "at their sampling step costs the final sample, measured before training (default: "
                             "sensitivity for qat, uniform for tsm)")
    parser.add_argument("--sensitivity-samples", type=int, default=8,
                        help="noises (held-out seed) of the step-sensitivity measurement")
    parser.add_argument("--distill-target", choices=DISTILL_TARGETS, default="eps",
                        help="--method qat: distil the ANN's eps on x_t of its trajectories (eps), or its final DDIM "
                             "sample from the same fresh noise, back-propagated through the twin's whole unrolled "
                             "trajectory of --trajectory-steps steps (sample: --batch-size noises per step, one "
                             "twin pass per DDIM step)")
    parser.add_argument("--sample-loss", choices=SAMPLE_LOSSES, default="mse",
                        help="--distill-target sample: the batch's MSE, or psnr: the mean of each sample's log MSE "
                             "(its PSNR against the ANN, up to sign and scale), so that a sample whose trajectory "
                             "went to another image does not dominate the gradient")
    parser.add_argument("--spike-penalty", type=float, default=0.0,
                        help="--method qat: add this weight times the twin's spike rate (mean ON + OFF spike units "
                             "per neuron and SNN step, straight-through gradients) to the loss, trading quality "
                             "for fewer spikes; 0: off")
    parser.add_argument("--eval-size", type=int, default=16, help="fixed inputs on which losses before/after are measured")
    add_training_arguments(parser, steps=500, batch_size=8, lr=1e-3, ema=0.0, checkpoint_every=100,
                           checkpoint="checkpoint.pt", seed_help="seed of batch sampling and data noise")
    return parser


def label(args: argparse.Namespace) -> str:
    """What a run trains, in a few words."""
    if args.method != "qat":
        return args.train
    penalty = f", spike penalty {args.spike_penalty:g}" if args.spike_penalty else ""
    return f"qat, weights {args.weights}, {args.distill_target} target{penalty}"


def spikes(rate: dict | None) -> str:
    """", spike rate B -> A" for a QAT run (B unknown when resumed from a checkpoint that did not measure it)."""
    if not rate:
        return ""
    before = "?" if rate["before"] is None else f"{rate['before']:.4g}"
    return f", spike rate {before} -> {rate['after']:.4g}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    from ..converter.finetune.run import finetune  # heavy: after parsing (fast --help)

    def report(summary: dict) -> None:
        before, after = summary["loss_before"], summary["loss_after"]
        per_step = summary["seconds_per_step"]
        print(f"wrote {summary['out']}: {summary['steps']} steps ({label(args)}), loss {before['loss']:.5g} -> "
              f"{after['loss']:.5g}" + spikes(summary.get("spike_rate"))
              + (f", {per_step:.3f} s/step on {summary['device']}" if per_step else ""))

    return run_command(PROG, lambda: finetune(FinetuneSettings(**vars(args))), report,
                       f"continue from the last checkpoint with --resume (in {args.out})")


if __name__ == "__main__":
    sys.exit(main())

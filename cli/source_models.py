"""The source-model commands: `sdm-zoo` lists the registered models as a Markdown table (name,
aliases, size, measured FID); `sdm-train` trains the project's own DDPM UNet on an image folder or zip (32x32 or 64x64,
SiLU or ReLU; `--init MODEL --activation relu` is the conversion-friendly prepare step).

When training ends, OUT is a diffusers DDPMPipeline folder with the EMA weights (what
`sdm-convert --checkpoint OUT` reads), ckpt.pt in the own layout, MODEL_CARD.md, samples.png,
loss_log.csv, training.json and the final checkpoint (resume with a larger --steps to train on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..pretrained.train_settings import ACTIVATIONS, RESIZE_POLICIES, RESOLUTIONS, TrainSettings
from .common import add_training_arguments, make_parser, run_command

PROG = "sdm-train"
ZOO_PROG = "sdm-zoo"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__)
    p.add_argument("--data", type=Path, required=True, help="images: a folder or a zip (e.g. the CIFAR-10 zip)")
    p.add_argument("--out", type=Path, required=True, help="output folder (holds the checkpoint while training)")
    p.add_argument("--split", default=None, help="keep images under a folder of this name (CIFAR-10 zip: train)")
    p.add_argument("--data-limit", type=int, default=None, help="seeded subset of this many images (default: all)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="crop",
                   help="crop: center-crop and resize to --resolution; none: images must already be that size")
    p.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS, help="image size of the model")
    p.add_argument("--channels", type=int, default=64, help="width of the first level")
    p.add_argument("--channel-mult", default="1,2,2,2", help="width multiplier per level")
    p.add_argument("--layers-per-block", type=int, default=2, help="ResNet blocks per level")
    p.add_argument("--attention-resolutions", default="16",
                   help="feature-map sizes with self-attention, e.g. 16 or 16,8 ('' for none)")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="silu (default for new models) or relu; with --init, swaps the source's activation")
    p.add_argument("--init", default=None,
                   help="start from this source model (path or zoo name) instead of random weights: its architecture, "
                        "weights and noise schedule; with --activation relu this is the conversion-friendly 'prepare' step")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of the ResNet blocks")
    p.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    p.add_argument("--sample-count", type=int, default=16, help="images in samples.png (DDIM, seeded)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of samples.png")
    add_training_arguments(p, steps=1000, batch_size=128, lr=2e-4, ema=0.9995, checkpoint_every=500,
                           checkpoint="train_checkpoint.pt", seed_help="seed of initialisation, batches and noise")
    return p


def zoo_main(argv: list[str] | None = None) -> int:
    make_parser(ZOO_PROG, "The registered source models as a Markdown table.").parse_args(argv)  # --help; unknown flags: exit 2
    from ..pretrained.zoo import zoo_table
    return run_command(ZOO_PROG, zoo_table, print)


def train_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..pretrained.train import train  # heavy: after parsing (fast --help)

    def report(summary: dict) -> None:
        print(f"wrote {args.out}: {summary['steps']} steps, loss {summary['loss_before']:.4f} -> "
              f"{summary['loss_after']:.4f}, {summary['seconds_per_step']:.3f} s/step on {summary['device']}")

    return run_command(PROG, lambda: train(TrainSettings(**vars(args))), report,
                       f"continue from the last checkpoint with --resume (in {args.out})")


if __name__ == "__main__":
    sys.exit(train_main())

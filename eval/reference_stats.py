"""CLI: compute and cache the Inception statistics of a reference image set (for FID).

Reference statistics (e.g. all 50,000 CIFAR-10 training images) cost minutes to hours on CPU,
so they are computed once, written atomically with their provenance, and reused by every FID.

    python -m sdm.eval.reference_stats --data ../shared/data/cifar10-jpeg.zip --split train \
        --out .cache/fid/cifar10-train-jpeg.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sdm.core.atomic import probe_writable
from sdm.core.devices import resolve_device
from sdm.core.errors import CommandParser, SdmError, run_reporting_errors
from sdm.eval.fid import InceptionFeatures, stats_from_source
from sdm.eval.image_data import ImageSource

PROG = "python -m sdm.eval.reference_stats"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder or .zip of .jpg/.jpeg/.png images")
    parser.add_argument("--split", help="keep only images under a folder of this name (train/test)")
    parser.add_argument("--limit", type=int, help="use a fixed seeded subset of this many images")
    parser.add_argument("--resolution", type=int,
                        help="center-crop to square and resize to this size (default: native)")
    parser.add_argument("--out", required=True, help="where to write the .npz statistics")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> tuple:
    """Validate everything cheap first (images, options, --out), then compute and write the stats."""
    start = time.perf_counter()
    out = Path(args.out)
    if out.is_dir():
        raise SdmError(f"stats output is a folder, not a file: {out}")
    probe_writable(out)
    resolve_device(args.device)
    source = ImageSource(args.data, split=args.split, limit=args.limit, resolution=args.resolution)
    if args.batch_size < 1:
        raise SdmError(f"--batch-size must be >= 1, got {args.batch_size}")
    extractor = InceptionFeatures(device=args.device, batch_size=args.batch_size, progress=not args.quiet)
    stats = stats_from_source(source, extractor)
    return stats, stats.save(out), time.perf_counter() - start, extractor


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result, code = run_reporting_errors(PROG, lambda: run(args))
    if code:
        return code
    stats, out, seconds, extractor = result
    size = f"{stats.resolution}x{stats.resolution}" if stats.resolution else "native size"
    print(f"wrote {out}: {stats.count} images (split {stats.split or 'all'}, {size}) from "
          f"{stats.source} in {seconds:.1f} s ({stats.count / seconds:.2f} img/s, {extractor.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m sdm.eval.reference_stats`: compute and cache the Inception statistics of a reference
image set (for FID).

Reference statistics (e.g. all 50,000 CIFAR-10 training images) cost minutes to hours on CPU,
so they are computed once, written atomically with their provenance, and reused by every FID.

    python -m sdm.eval.reference_stats --data ../shared/data/cifar10-jpeg.zip --split train \\
        --out .cache/fid/cifar10-train-jpeg.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import probe_writable
from ..core.settings import at_least
from .common import add_device_argument, make_parser, run_command

PROG = "python -m sdm.eval.reference_stats"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument("--data", required=True, help="folder or .zip of .jpg/.jpeg/.png images")
    parser.add_argument("--split", help="keep only images under a folder of this name (train/test)")
    parser.add_argument("--limit", type=int, help="use a fixed seeded subset of this many images (default: all)")
    parser.add_argument("--resolution", type=int,
                        help="center-crop to square and resize to this size (default: native)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .npz statistics")
    parser.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


@dataclass(frozen=True)
class ReferenceStatsSettings:
    data: str
    out: Path
    split: str | None = None
    limit: int | None = None
    resolution: int | None = None
    batch_size: int = 50
    device: str = "cpu"
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.limit is not None:
            at_least("--limit", self.limit, 1)
        if self.resolution is not None:
            at_least("--resolution", self.resolution, 1)
        at_least("--batch-size", self.batch_size, 1)
        probe_writable(self.out)


def run(settings: ReferenceStatsSettings) -> str:
    # Heavy imports after parsing and validation (fast --help).
    from ..core.image_data import ImageSource
    from ..eval.metrics.fid import InceptionFeatures, stats_from_source

    start = time.perf_counter()
    source = ImageSource(settings.data, split=settings.split, limit=settings.limit, resolution=settings.resolution)
    extractor = InceptionFeatures(device=settings.device, batch_size=settings.batch_size, progress=not settings.quiet)
    stats = stats_from_source(source, extractor)
    out = stats.save(settings.out)
    seconds = time.perf_counter() - start
    size = f"{stats.resolution}x{stats.resolution}" if stats.resolution else "native size"
    return (f"wrote {out}: {stats.count} images (split {stats.split or 'all'}, {size}) from "
            f"{stats.source} in {seconds:.1f} s ({stats.count / seconds:.2f} img/s, {extractor.device})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(ReferenceStatsSettings(**vars(args))), print)


if __name__ == "__main__":
    sys.exit(main())

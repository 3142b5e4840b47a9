"""`sdm-calibrate`: run the source ANN once and save its calibration record, for
`sdm-convert --record` and `eval/sweep.py --record` to reuse without running the ANN again."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..calibration.settings import CalibrationSettings
from ..core.atomic import ensure_free_target
from ..core.settings import at_least
from ..pretrained.zoo import DEFAULT_MODEL
from .common import add_device_argument, add_output_arguments, make_parser, run_command

PROG = "sdm-calibrate"


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The source model and the calibration options `sdm-calibrate` and `sdm-convert` share."""
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL,
                        help="source model: an embedded model name, a diffusers folder, a .safetensors file with a "
                             "JSON config beside it, or an own-layout DDPM ckpt.pt")
    add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration (and evaluation) noise")
    calib = parser.add_argument_group("calibration")
    calib.add_argument("--calib-samples", type=int, default=8, help="DDIM trajectories of the ANN (or images with --calib-data)")
    calib.add_argument("--calib-steps", type=int, default=10, help="DDIM steps per trajectory (timesteps per image with --calib-data)")
    calib.add_argument("--calib-batch-size", type=int, default=8, help="batch size of calibration")
    calib.add_argument("--calib-data", type=Path, default=None,
                       help="calibrate on real images (folder or zip) noised by q(x_t | x_0) instead of data-free "
                            "DDIM trajectories; --calib-samples images at --calib-steps timesteps each")
    calib.add_argument("--calib-split", default=None, help="only images under this path component (e.g. train)")


@dataclass(frozen=True)
class SourceCalibration:
    """Which source model, on which device, calibrated how: what `sdm-calibrate` does alone and
    `sdm-convert` does first."""

    checkpoint: str
    device: str
    calibration: CalibrationSettings
    calib_data: Path | None = None
    calib_split: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SourceCalibration":
        for flag in ("calib_samples", "calib_steps", "calib_batch_size"):  # named as the user typed them
            at_least("--" + flag.replace("_", "-"), getattr(args, flag), 1)
        settings = CalibrationSettings(num_samples=args.calib_samples, steps=args.calib_steps, seed=args.seed,
                                       batch_size=args.calib_batch_size)
        return cls(args.checkpoint, args.device, settings, args.calib_data, args.calib_split)

    def load(self):
        """(device, source model, calibration images or None), after the output was checked."""
        from ..calibration.collect import calibration_images  # heavy: after parsing (fast --help)
        from ..core.devices import resolve_device
        from ..pretrained.loading import load_source_model

        device = resolve_device(self.device)
        source = load_source_model(self.checkpoint)
        images = None
        if self.calib_data is not None:
            images = calibration_images(self.calib_data, self.calib_split, self.calibration.num_samples,
                                        source.unet.config.sample_size)
        return device, source, images


@dataclass(frozen=True)
class CalibrateSettings:
    source: SourceCalibration
    out: Path
    overwrite: bool

    def __post_init__(self) -> None:
        ensure_free_target(self.out, self.overwrite)  # and proven writable, before any model loads


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    add_output_arguments(parser, "record folder to write (calibration.json + calibration.safetensors)")
    add_source_arguments(parser)
    return parser


def run(settings: CalibrateSettings) -> dict:
    from ..calibration.collect import calibrate  # heavy: after parsing and validation (fast --help)
    from ..core.atomic import atomic_folder
    from ..core.training import inference_mode

    device, source, images = settings.source.load()
    source.unet.to(device)
    with inference_mode(source.unet):
        record = calibrate(source.unet, source.scheduler_config, settings.source.calibration, source.fingerprint,
                           device, images)
    with atomic_folder(settings.out, overwrite=settings.overwrite) as staging:
        record.save(staging)
    return {"out": str(settings.out), "sites": len(record.sites), "inputs": record.meta["inputs"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(CalibrateSettings(SourceCalibration.from_args(args), args.out, args.overwrite)),
                       lambda r: print(f"wrote {r['out']}: {r['sites']} sites ({r['inputs']})"))


if __name__ == "__main__":
    sys.exit(main())

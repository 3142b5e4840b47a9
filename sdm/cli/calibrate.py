"""`sdm-calibrate`: run the source ANN once and save its calibration record, for
`sdm-convert --record` and `eval/sweep.py --record` to reuse without running the ANN again."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from sdm.calibration.settings import CalibrationSettings
from sdm.cli.common import add_device_argument, add_output_arguments, make_parser, run_command
from sdm.cli.convert import add_calibration_arguments, add_checkpoint_argument, calibration_settings
from sdm.core.settings import probe_writable

PROG = "sdm-calibrate"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    add_checkpoint_argument(parser)
    add_output_arguments(parser, "record folder to write (calibration.json + calibration.safetensors)")
    add_device_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration noise")
    add_calibration_arguments(parser)
    return parser


@dataclass(frozen=True)
class CalibrateSettings:
    checkpoint: str
    out: Path
    overwrite: bool
    device: str
    calibration: CalibrationSettings
    calib_data: Path | None = None
    calib_split: str | None = None

    def __post_init__(self) -> None:
        probe_writable(self.out)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CalibrateSettings":
        return cls(checkpoint=args.checkpoint, out=args.out, overwrite=args.overwrite, device=args.device,
                   calibration=calibration_settings(args), calib_data=args.calib_data, calib_split=args.calib_split)


def run(settings: CalibrateSettings) -> dict:
    # Heavy imports after parsing and validation (fast --help).
    from sdm.calibration.collect import calibrate, calibration_images
    from sdm.converter.export import atomic_folder, ensure_free_target
    from sdm.core.devices import resolve_device
    from sdm.core.training import inference_mode
    from sdm.pretrained.loading import load_source_model

    device = resolve_device(settings.device)
    ensure_free_target(settings.out, settings.overwrite)
    source = load_source_model(settings.checkpoint)
    images = None
    if settings.calib_data is not None:
        images = calibration_images(settings.calib_data, settings.calib_split, settings.calibration.num_samples,
                                    source.unet.config.sample_size)
    source.unet.to(device)
    with inference_mode(source.unet):
        record = calibrate(source.unet, source.scheduler_config, settings.calibration, source.fingerprint, device, images)
    with atomic_folder(settings.out, overwrite=settings.overwrite) as staging:
        record.save(staging)
    return {"out": str(settings.out), "sites": len(record.sites), "inputs": record.meta["inputs"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(CalibrateSettings.from_args(args)),
                       lambda r: print(f"wrote {r['out']}: {r['sites']} sites ({r['inputs']})"))


if __name__ == "__main__":
    sys.exit(main())

"""`sdm-export`: converted SNN folders to formats other runtimes read (ONNX; NIR where it can)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import probe_writable
from .common import add_subcommand, make_parser, run_command

PROG = "sdm-export"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = add_subcommand(sub, "onnx", "whole spiking UNet, T steps unrolled, verified with onnxruntime (PyTorch "
                                       "pinned to the exported spikes; differing decisions must be threshold ties)")
    onnx.add_argument("--snn", type=Path, required=True, help="converted model folder (from sdm-convert)")
    onnx.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    onnx.add_argument("--ann", default=None, help="also export this source ANN (path or embedded name) for comparison")
    onnx.add_argument("--ann-out", type=Path, default=None, help="where to write the ANN's ONNX (default: beside --out)")
    onnx.add_argument("--report", type=Path, default=None, help="export report JSON (default: <out>.json)")
    nir = add_subcommand(sub, "nir", "NIR graph for neuromorphic tools; refused for UNets, naming what NIR cannot express")
    nir.add_argument("--snn", type=Path, required=True, help="converted model folder (from sdm-convert)")
    nir.add_argument("--out", type=Path, required=True, help="NIR file to write")
    return parser


@dataclass(frozen=True)
class ExportSettings:
    format: str
    snn: Path
    out: Path
    ann: str | None = None
    ann_out: Path | None = None
    report: Path | None = None

    def __post_init__(self) -> None:
        for path in (self.out, self.ann_out_path, self.report_path):
            if path is not None:
                probe_writable(path)  # before minutes of export, not after

    @property
    def ann_out_path(self) -> Path | None:
        if self.ann is None:
            return None
        return self.ann_out or self.out.with_name(self.out.stem + "-ann.onnx")

    @property
    def report_path(self) -> Path:
        return self.report or self.out.with_suffix(".json")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExportSettings":
        return cls(format=args.format, snn=args.snn, out=args.out, ann=getattr(args, "ann", None),
                   ann_out=getattr(args, "ann_out", None), report=getattr(args, "report", None))


def run(settings: ExportSettings) -> dict:
    # Heavy imports after parsing and validation (fast --help).
    from ..converter.export.nir_export import export_nir
    from ..converter.export.onnx_export import export_onnx
    from ..converter.folder import check_same_source, load_converted
    from ..core.atomic import write_text
    from ..pretrained.loading import load_source_model

    snn = load_converted(settings.snn)
    shape = (snn.config.in_channels, snn.config.sample_size, snn.config.sample_size)
    if settings.format == "nir":
        export_nir(snn, settings.out)
    source = None
    if settings.ann is not None:  # checked against the SNN's source before any export work
        source = load_source_model(settings.ann)
        check_same_source(snn, source, str(settings.snn))
    report = {"snn": export_onnx(snn, settings.out, shape), "snn_folder": str(settings.snn), "timesteps": snn.timesteps,
              "source_fingerprint": (snn.config.provenance or {}).get("source", {}).get("fingerprint")}
    if source is not None:
        report["ann"] = {**export_onnx(source.unet, settings.ann_out_path, shape), "source": source.describe()}
    write_text(settings.report_path, json.dumps(report, indent=2))
    report["report"] = str(settings.report_path)
    return report


def print_report(report: dict) -> None:
    for name in ("snn", "ann"):
        if name in report:
            part = report[name]
            spiking = len(part["outputs"]) > 1
            ties = sum(c.get("disagreeing_spikes", 0) for c in part["parity"])
            pinned = (f" on the same spikes ({ties} threshold ties, largest {part['worst_tie_distance']:.1e} thresholds "
                      f"from firing)") if spiking else ""
            print(f"{name}: {part['path']} ({part['bytes'] / 2**20:.1f} MiB), max |ORT - PyTorch| / scale "
                  f"{part['max_relative_difference']:.2e}{pinned}, s/eval PyTorch "
                  f"{part['seconds_per_eval']['pytorch']:.3f} vs onnxruntime {part['seconds_per_eval']['onnxruntime']:.3f}")
    print(f"report: {report['report']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(ExportSettings.from_args(args)), print_report)


if __name__ == "__main__":
    sys.exit(main())

"""`sdm-export`: converted SNN folders to formats other runtimes read (ONNX; NIR where it can)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sdm.converter.export import check_same_source, load_converted
from sdm.converter.nir_export import export_nir
from sdm.converter.onnx_export import export_onnx
from sdm.pretrained.loading import load_source_model
from sdm.core.atomic import probe_writable, write_text
from sdm.core.errors import run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdm-export", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser("onnx", help="whole spiking UNet, T steps unrolled, verified with onnxruntime "
                                       "(PyTorch pinned to the exported spikes; differing decisions must be threshold ties)")
    onnx.add_argument("--snn", type=Path, required=True, help="converted model folder (from sdm-convert)")
    onnx.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    onnx.add_argument("--ann", default=None, help="also export this source ANN (path or embedded name) for comparison")
    onnx.add_argument("--ann-out", type=Path, default=None, help="where to write the ANN's ONNX (default: beside --out)")
    onnx.add_argument("--report", type=Path, default=None, help="export report JSON (default: <out>.json)")
    nir = sub.add_parser("nir", help="NIR graph for neuromorphic tools; refused for UNets, naming what NIR cannot express")
    nir.add_argument("--snn", type=Path, required=True)
    nir.add_argument("--out", type=Path, required=True)
    return parser


def run(args: argparse.Namespace) -> dict:
    snn = load_converted(args.snn)
    shape = (snn.config.in_channels, snn.config.sample_size, snn.config.sample_size)
    if args.format == "nir":
        export_nir(snn, args.out)
    ann_out = args.ann_out or args.out.with_name(args.out.stem + "-ann.onnx")
    report_path = args.report or args.out.with_suffix(".json")
    for path in [args.out, report_path] + ([ann_out] if args.ann is not None else []):
        probe_writable(path)  # before minutes of export, not after
    source = None
    if args.ann is not None:
        source = load_source_model(args.ann)
        check_same_source(snn, source, str(args.snn))
    report = {"snn": export_onnx(snn, args.out, shape), "snn_folder": str(args.snn), "timesteps": snn.timesteps,
              "source_fingerprint": (snn.config.provenance or {}).get("source", {}).get("fingerprint")}
    if source is not None:
        report["ann"] = {**export_onnx(source.unet, ann_out, shape), "source": source.describe()}
    write_text(report_path, json.dumps(report, indent=2))
    report["report"] = str(report_path)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report, code = run_reporting_errors("sdm-export", lambda: run(args))
    if code:
        return code
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python eval/compare.py ann-vs-snn`: the source ANN and converted SNNs, side by side.

Writes to --out: report.json, report.md, samples_ann.npz, samples_snn.npz (one SNN) or
samples_snn_<label>.npz (several), grid.png (ANN row above each SNN row, same noise),
spike_rates.png, and metrics_vs_T.png when several SNNs are compared.

`python eval/compare.py ann-fid`: one ANN's FID against reference statistics (the number a
model card and the zoo record), with report.json, samples_ann.npz and grid.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from sdm.converter.allocator import retain_freed_memory
from sdm.converter.export import check_same_source, load_converted
from sdm.converter.simulation import check_choice
from sdm.eval import distributed
from sdm.eval.images import save_grid_rows, save_npz_images, to_uint8
from sdm.eval.paired import PairedSettings, measure_snn, sample_ann
from sdm.eval.plots import plot_metric_curves, plot_spike_rates
from sdm.eval.report import FidContext, write_markdown
from sdm.eval.sampling import add_sampling_arguments
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL
from sdm.core.atomic import atomic_folder, ensure_free_target
from sdm.core.errors import SdmError, run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compare.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ann-vs-snn", help="sample ANN and SNN(s) from the same noise and report how close they are")
    p.add_argument("--ann", default=DEFAULT_MODEL, help=f"source ANN (path or embedded name; default {DEFAULT_MODEL})")
    p.add_argument("--snn", nargs="+", required=True, type=Path, help="converted model folder(s) made by sdm-convert")
    add_sampling_arguments(p, num_samples=16, steps=20, batch_size=16)
    p.add_argument("--fid-ref", type=Path, default=None, help="reference Inception statistics (.npz from eval.reference_stats)")
    p.add_argument("--fid", action="store_true", help="compute FID between ANN and SNN samples even without --fid-ref")
    p.add_argument("--simulation", default="steps", help="steps (default), closed-form (the quantised twin, ANN cost, "
                   "no spikes counted) or both (steps plus closed form and their agreement in report.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    f = sub.add_parser("ann-fid", help="sample one ANN and measure its FID against reference statistics")
    f.add_argument("--ann", default=DEFAULT_MODEL, help=f"ANN (path or embedded name; default {DEFAULT_MODEL})")
    f.add_argument("--fid-ref", type=Path, required=True, help="reference Inception statistics (.npz from eval.reference_stats)")
    add_sampling_arguments(f, num_samples=5000, steps=100, batch_size=64)
    f.add_argument("--out", type=Path, required=True, help="output folder")
    f.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def _check_counts(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise SdmError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.steps < 1:
        raise SdmError(f"--steps must be >= 1, got {args.steps}")


def ann_fid(args: argparse.Namespace) -> dict:
    """Sample the ANN from seeded noise and compare its Inception statistics with the reference."""
    from sdm.eval.fid import FeatureStats, InceptionFeatures, fid_from_stats

    _check_counts(args)
    device = distributed.start(vars(args), args.device)
    ensure_free_target(args.out, args.overwrite)
    reference = FeatureStats.load(args.fid_ref)
    source = load_source_model(args.ann)
    source.unet.to(device)
    settings = PairedSettings(args.num_samples, args.steps, args.seed, args.sampler, args.batch_size, device, args.tf32)
    _, run = sample_ann(source, settings)
    if not distributed.is_writer():
        return None
    images = to_uint8(run.samples)
    stats = FeatureStats.from_features(InceptionFeatures(device=str(device))(images))
    report = {
        "ann": source.describe(), "fid": fid_from_stats(stats, reference), "num_samples": args.num_samples,
        "sampler": args.sampler, "steps": args.steps, "seed": args.seed, "device": str(device), "tf32": args.tf32,
        "processes": distributed.world_size(),
        "reference": {"path": str(args.fid_ref), "source": reference.source, "split": reference.split,
                      "count": reference.count},
        "seconds_in_unet": run.unet_seconds,
    }
    with atomic_folder(args.out, overwrite=args.overwrite) as staging:
        save_npz_images(staging / "samples_ann.npz", images)
        save_grid_rows([images[:16]], staging / "grid.png", labels=["ANN"])
        (staging / "report.json").write_text(json.dumps(report, indent=2))
    return report


def ann_vs_snn(args: argparse.Namespace) -> dict:
    _check_counts(args)
    device = distributed.start(vars(args), args.device)
    ensure_free_target(args.out, args.overwrite)
    source = load_source_model(args.ann)
    source.unet.to(device)
    check_choice(args.simulation)
    labels = _labels(args.snn)
    snns = {}
    for label, folder in zip(labels, args.snn):
        snn = load_converted(folder, device=str(device))
        check_same_source(snn, source, str(folder))
        snns[label] = snn
    reference = None
    if args.fid_ref is not None:
        from sdm.eval.fid import FeatureStats

        reference = FeatureStats.load(args.fid_ref)
    settings = PairedSettings(args.num_samples, args.steps, args.seed, args.sampler, args.batch_size, device, args.tf32)
    noise, ann_run = sample_ann(source, settings)
    ann_images = to_uint8(ann_run.samples)
    runs = [measure_snn(snn, source, noise, ann_run, settings, label, args.simulation) for label, snn in snns.items()]
    if not distributed.is_writer():
        return None
    fid = FidContext(ann_images, reference, str(device)) if args.fid or reference is not None else None
    for run in runs:
        run["fid"] = fid.section(run["_images"]) if fid else FidContext.not_computed(args.num_samples)
    with atomic_folder(args.out, overwrite=args.overwrite) as staging:
        save_npz_images(staging / "samples_ann.npz", ann_images)
        for run in runs:
            name = "samples_snn.npz" if len(runs) == 1 else f"samples_snn_{run['label']}.npz"
            save_npz_images(staging / name, run["_images"])
        save_grid_rows([ann_images[:16]] + [r["_images"][:16] for r in runs], staging / "grid.png",
                       labels=["ANN"] + [r["label"] for r in runs])
        plot_spike_rates({r["label"]: r["spike_rate"]["per_site"] for r in runs}, staging / "spike_rates.png")
        if len(runs) > 1:
            plot_metric_curves("SNN time steps T", [r["timesteps"] for r in runs], {
                "PSNR SNN vs ANN (dB)": [r["paired"]["psnr_db"] for r in runs],
                "eps relative L2": [r["paired"]["eps_rel_l2"] for r in runs],
                "energy SNN/ANN": [r["energy"]["snn_over_ann"] for r in runs],
            }, staging / "metrics_vs_T.png")
        report = _report(args, source, runs)
        (staging / "report.json").write_text(json.dumps(report, indent=2))
        write_markdown(report, staging / "report.md")
    return report


def _labels(folders: list[Path]) -> list[str]:
    names = [Path(f).name for f in folders]
    return names if len(set(names)) == len(names) else [f"{i}-{n}" for i, n in enumerate(names)]


def _report(args: argparse.Namespace, source, runs: list[dict]) -> dict:
    clean = [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs]
    first = clean[0]
    return {
        "ann": source.describe(),
        "num_samples": args.num_samples,
        "sampler": args.sampler,
        "steps": args.steps,
        "seed": args.seed,
        "device": str(args.device),
        "tf32": args.tf32,
        "processes": distributed.world_size(),
        **{k: first[k] for k in ("timesteps", "paired", "fid", "spike_rate", "energy", "time")},
        "runs": clean,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    try:
        return _run(args)
    finally:
        distributed.close()


def _run(args: argparse.Namespace) -> int:
    if args.command == "ann-fid":
        report, code = run_reporting_errors("compare.py", lambda: ann_fid(args))
        if not code and report is not None:
            print(f"ANN FID {report['fid']:.2f} ({report['num_samples']} samples, {report['sampler']} "
                  f"{report['steps']} steps, reference {report['reference']['source']} {report['reference']['split']})")
            print(f"wrote {args.out}")
        return code
    report, code = run_reporting_errors("compare.py", lambda: ann_vs_snn(args))
    if code or report is None:  # report None: a torchrun rank other than 0, which writes nothing
        return code
    for run in report["runs"]:
        fid = run["fid"]
        fid_text = f", FID SNN vs ANN {fid['snn_vs_ann']:.2f}" if fid["snn_vs_ann"] is not None else ""
        spikes = "" if run["spike_rate"]["mean"] is None else (
            f", spike rate {run['spike_rate']['mean']:.3f}, energy SNN/ANN {run['energy']['snn_over_ann']:.3f} "
            f"(quantised ANN {run['energy']['snn_over_quantised_ann']:.3f})")
        print(f"{run['label']}: T={run['timesteps']} ({run['simulation']}) PSNR {run['paired']['psnr_db']:.2f} dB, "
              f"eps rel. L2 {run['paired']['eps_rel_l2']:.4f}{spikes}, time SNN/ANN {run['time']['snn_over_ann']:.2f}"
              f"{fid_text}")
        if "equivalence" in run:
            eq = run["equivalence"]
            print(f"  equivalence: counts differ {eq['count_differs_fraction']:.2e} (ties {eq['count_differs_ties_fraction']:.2e}), "
                  f"closed-form PSNR {run['closed_form']['paired']['psnr_db']:.2f} dB, largest eps rel. difference "
                  f"{eq['largest_eps_relative_difference']:.2e}, closed-form/steps time {eq['closed_form_over_steps_time']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

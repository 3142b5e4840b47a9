"""`python eval/sweep.py`: calibration and spiking-level sweeps on a saved calibration record.

Sweeps spiking level x threshold method x percentile x T x threshold scale (TG). The record
supplies every statistic, so the ANN never runs for calibration again; it samples once, from the
shared noise, and is evaluated on the SNN trajectories only to measure the per-step eps error.
Writes sweep.csv, sweep.md (with the best threshold scale per T), sweep.json (each run's per-site
spike rates and energy breakdown too), metric plots, and pareto.png: energy SNN / float ANN
against PSNR against the ANN, one point per run, the Pareto front drawn.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path


from sdm.calibration.record import CalibrationRecord
from sdm.converter.allocator import retain_freed_memory
from sdm.core.devices import resolve_device
from sdm.converter.convert import convert
from sdm.converter.policy import SPIKING_LEVELS, THRESHOLD_METHODS, ConversionPolicy
from sdm.converter.simulation import check_choice
from sdm.eval.paired import PairedSettings, measure_snn, sample_ann
from sdm.eval.plots import plot_metric_curves, plot_pareto, plot_spike_rates
from sdm.eval.sampling import add_sampling_arguments
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL
from sdm.core.atomic import atomic_folder, ensure_free_target
from sdm.core.errors import SdmError, run_reporting_errors

COLUMNS = ["spiking", "method", "percentile", "timesteps", "threshold_scale", "psnr_db", "eps_rel_l2", "eps_cosine",
           "spike_rate", "energy_snn_over_ann", "energy_snn_over_quantised_ann", "time_snn_over_ann", "simulation",
           "closed_form_psnr_db", "count_differs_fraction"]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.splitlines()[0])
    p.add_argument("--ann", default=DEFAULT_MODEL, help=f"source ANN (default {DEFAULT_MODEL})")
    p.add_argument("--record", type=Path, required=True, help="folder with calibration.json/.safetensors "
                   "(any sdm-convert output folder)")
    p.add_argument("--levels", default="hybrid", help=f"comma list of spiking levels: {', '.join(SPIKING_LEVELS)} "
                   "(default hybrid)")
    p.add_argument("--methods", default="mse", help=f"comma list of {', '.join(THRESHOLD_METHODS)} (default mse)")
    p.add_argument("--percentiles", default="99.9", help="comma list, used with the percentile method (default 99.9)")
    p.add_argument("--timesteps", default="4", help="comma list of T (default 4)")
    p.add_argument("--scales", default="1.0", help="comma list of threshold scales (TG; default 1.0)")
    p.add_argument("--simulation", default="steps", help="steps (default), closed-form (quantised twin, ANN cost) or both")
    p.add_argument("--policy", default="{}", help='other conversion options as JSON, e.g. \'{"negative_lobe": "relu"}\'')
    add_sampling_arguments(p, num_samples=8, steps=20, batch_size=16)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    return p


def grid(args: argparse.Namespace) -> list[tuple[str, str, float, int, float]]:
    """(level, method, percentile, T, scale) combinations; percentiles only multiply the percentile method."""
    methods = [m for m in args.methods.split(",") if m.strip()]
    levels = [v.strip() for v in args.levels.split(",") if v.strip()]
    percentiles, timesteps, scales = _floats(args.percentiles), _ints(args.timesteps), _floats(args.scales)
    if not levels or not methods or not timesteps or not scales or ("percentile" in methods and not percentiles):
        raise SdmError("sweep grid is empty: give at least one level, method, T and scale (and percentile for that "
                       "method)")
    for scale in scales:
        if scale <= 0:
            raise SdmError(f"threshold scale must be > 0, got {scale}")
    combos = []
    for level, method, t in itertools.product(levels, methods, timesteps):
        for percentile in percentiles if method == "percentile" else [percentiles[0] if percentiles else 99.9]:
            combos.extend((level, method, percentile, t, s) for s in scales)
    return combos


def sweep(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    try:
        extra = json.loads(args.policy)
    except json.JSONDecodeError as exc:
        raise SdmError(f"--policy is not JSON: {exc}") from None
    check_choice(args.simulation)
    combos = grid(args)
    for level, method, percentile, t, scale in combos:  # validate every policy before any work
        ConversionPolicy.from_dict({**extra, "spiking": level, "threshold_method": method, "percentile": percentile,
                                    "timesteps": t, "threshold_scale": scale})
    ensure_free_target(args.out, args.overwrite)
    source = load_source_model(args.ann)
    record = CalibrationRecord.load(args.record)
    record.check_source(source.describe()["fingerprint"])
    source.unet.to(device)
    settings = PairedSettings(args.num_samples, args.steps, args.seed, args.sampler, args.batch_size, device, args.tf32)
    noise, ann_run = sample_ann(source, settings)
    rows = []
    converted: dict[tuple, object] = {}
    details = []
    for level, method, percentile, t, scale in combos:
        key = (level, method, percentile, t)
        if key not in converted:
            policy = ConversionPolicy.from_dict({**extra, "spiking": level, "threshold_method": method,
                                                 "percentile": percentile, "timesteps": t})
            converted = {key: convert(source, record, policy, device)}  # keep one model in memory
        snn = converted[key]
        snn.set_threshold_scale(scale)
        run = measure_snn(snn, source, noise, ann_run, settings, f"{level}-{method}-p{percentile}-T{t}-s{scale}",
                          args.simulation)
        both = run.get("equivalence")
        rows.append({
            "spiking": level, "method": method, "percentile": percentile if method == "percentile" else None,
            "timesteps": t, "threshold_scale": scale, "psnr_db": run["paired"]["psnr_db"],
            "eps_rel_l2": run["paired"]["eps_rel_l2"], "eps_cosine": run["paired"]["eps_cosine"],
            "spike_rate": run["spike_rate"]["mean"], "energy_snn_over_ann": run["energy"]["snn_over_ann"],
            "energy_snn_over_quantised_ann": run["energy"].get("snn_over_quantised_ann"),
            "time_snn_over_ann": run["time"]["snn_over_ann"], "simulation": args.simulation,
            "closed_form_psnr_db": run["closed_form"]["paired"]["psnr_db"] if both else None,
            "count_differs_fraction": both["count_differs_fraction"] if both else None,
        })
        details.append({"label": run["label"], "policy": run["policy"], "spike_rate_per_site": run["spike_rate"]["per_site"],
                        "energy": run["energy"], "psnr_db_per_image": run["paired"]["psnr_db_per_image"]})
    with atomic_folder(args.out, overwrite=args.overwrite) as staging:
        _write(rows, details, staging, args)
    return rows


def _write(rows: list[dict], details: list[dict], folder: Path, args: argparse.Namespace) -> None:
    with open(folder / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "sweep.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                   "rows": rows, "runs": details}, indent=2))
    plot_pareto([f"{r['spiking']} T={r['timesteps']}" + ("" if r["threshold_scale"] == 1.0 else f" s={r['threshold_scale']}")
                 for r in rows], [r["energy_snn_over_ann"] for r in rows], [r["psnr_db"] for r in rows],
                folder / "pareto.png")
    plot_spike_rates({run["label"]: run["spike_rate_per_site"] for run in details}, folder / "spike_rates.png")
    lines = [f"# Sweep ({args.num_samples} samples, {args.sampler} {args.steps} steps, seed {args.seed})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS) + " |")
    lines += ["", "Best threshold scale (PSNR) per level, T and method:", ""]
    grouping = lambda r: (r["spiking"], r["method"], r["percentile"], r["timesteps"])  # noqa: E731
    for (level, method, percentile, t), group in itertools.groupby(rows, key=grouping):
        best = max(group, key=lambda r: r["psnr_db"])
        lines.append(f"- {level} {method}{'' if percentile is None else f' p{percentile}'} T={t}: scale "
                     f"{best['threshold_scale']} ({best['psnr_db']:.2f} dB)")
    lines += ["", "![energy vs PSNR](pareto.png)", "", "![spike rate per site](spike_rates.png) (values in sweep.json)"]
    (folder / "sweep.md").write_text("\n".join(lines) + "\n")
    for key, label in (("threshold_scale", "threshold scale"), ("timesteps", "SNN time steps T")):
        values = sorted({r[key] for r in rows})
        if len(values) > 1:
            others = [c for c in ("spiking", "method", "percentile", "timesteps", "threshold_scale") if c != key]
            first = {c: rows[0][c] for c in others}
            series = [next(r for r in rows if r[key] == v and all(r[c] == first[c] for c in others)) for v in values
                      if any(r[key] == v and all(r[c] == first[c] for c in others) for r in rows)]
            plot_metric_curves(label, [r[key] for r in series], {
                "PSNR SNN vs ANN (dB)": [r["psnr_db"] for r in series],
                "eps relative L2": [r["eps_rel_l2"] for r in series],
                "spike rate": [r["spike_rate"] for r in series],
            }, folder / f"sweep_vs_{key}.png")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    rows, code = run_reporting_errors("sweep.py", lambda: sweep(args))
    if code:
        return code
    for row in rows:
        print(", ".join(f"{c}={row[c]:.4g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in COLUMNS))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

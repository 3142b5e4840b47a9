"""Calibration and spiking-level sweeps on a saved calibration record (the library of `python eval/sweep.py`).

Sweeps spiking level x threshold method x percentile x T x threshold scale (TG). The record
supplies every statistic, so the ANN never runs for calibration again; it samples once, from the
shared noise, and is evaluated on the SNN trajectories only to measure the per-step eps error.
Writes sweep.csv, sweep.md (with the best threshold scale per T), sweep.json (each run's per-site
spike rates and energy breakdown too), metric plots, pareto.png (energy SNN / float ANN against
PSNR against the ANN, the Pareto front drawn) and spike_rates.png.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...calibration.record import CalibrationRecord
from ...converter.convert import convert
from ...converter.spiking.policy import ConversionPolicy
from ...converter.spiking.simulation import check_choice
from ...core.atomic import atomic_folder, ensure_free_target
from ...core.errors import SdmError
from ...core.settings import SamplingSettings
from ...pretrained.loading import load_source_model
from ..runs.paired import measure_snn, sample_ann
from .plots import plot_metric_curves, plot_pareto, plot_spike_rates

COLUMNS = ["spiking", "method", "percentile", "timesteps", "threshold_scale", "psnr_db", "eps_rel_l2", "eps_cosine",
           "spike_rate", "energy_snn_over_ann", "energy_snn_over_qann", "energy_snn_over_qann_zero_skip", "time_snn_over_ann", "simulation",
           "closed_form_psnr_db", "count_differs_fraction"]


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep; `combinations` validates every policy before any work."""

    methods: tuple[str, ...]
    percentiles: tuple[float, ...]
    timesteps: tuple[int, ...]
    scales: tuple[float, ...]
    extra: dict[str, Any]
    levels: tuple[str, ...] = ("hybrid",)

    def combinations(self) -> list[tuple[str, str, float, int, float]]:
        """(level, method, percentile, T, scale); percentiles only multiply the percentile method."""
        methods, percentiles = self.methods, self.percentiles
        if not self.levels or not methods or not self.timesteps or not self.scales or (
                "percentile" in methods and not percentiles):
            raise SdmError("sweep grid is empty: give at least one level, method, T and scale (and percentile for "
                           "that method)")
        for scale in self.scales:
            if scale <= 0:
                raise SdmError(f"threshold scale must be > 0, got {scale}")
        combos = []
        for level, method, t in itertools.product(self.levels, methods, self.timesteps):
            for percentile in percentiles if method == "percentile" else [percentiles[0] if percentiles else 99.9]:
                combos.extend((level, method, percentile, t, s) for s in self.scales)
        for level, method, percentile, t, scale in combos:
            self.policy(level, method, percentile, t, scale)
        return combos

    def policy(self, level: str, method: str, percentile: float, timesteps: int, scale: float) -> ConversionPolicy:
        return ConversionPolicy.from_dict({**self.extra, "spiking": level, "threshold_method": method,
                                           "percentile": percentile, "timesteps": timesteps, "threshold_scale": scale})


def sweep(ann: str, record_folder: Path, grid: SweepGrid, sampling: SamplingSettings, out: Path,
          overwrite: bool, simulation: str = "steps") -> list[dict]:
    """One ANN sampling, then every combination measured against it; written to `out` as a whole."""
    check_choice(simulation)
    combos = grid.combinations()
    ensure_free_target(out, overwrite)
    source = load_source_model(ann)
    record = CalibrationRecord.load(record_folder)
    record.check_source(source.fingerprint)
    source.unet.to(sampling.device)
    noise, ann_run = sample_ann(source, sampling)
    rows, details = [], []
    converted: dict[tuple, object] = {}
    for level, method, percentile, t, scale in combos:
        key = (level, method, percentile, t)
        if key not in converted:  # the scale only changes the neurons at sampling time: convert once per key
            converted = {key: convert(source, record, grid.policy(level, method, percentile, t, 1.0), sampling.device)}
        snn = converted[key]
        snn.set_threshold_scale(scale)  # updates the policy with the neurons, so reports stay true
        run = measure_snn(snn, source, noise, ann_run, sampling, f"{level}-{method}-p{percentile}-T{t}-s{scale}",
                          simulation)
        both = run.get("equivalence")
        rows.append({
            "spiking": level, "method": method, "percentile": percentile if method == "percentile" else None,
            "timesteps": t, "threshold_scale": scale, "psnr_db": run["paired"]["psnr_db"],
            "eps_rel_l2": run["paired"]["eps_rel_l2"], "eps_cosine": run["paired"]["eps_cosine"],
            "spike_rate": run["spike_rate"]["mean"], "energy_snn_over_ann": run["energy"]["snn_over_ann"],
            "energy_snn_over_qann": run["energy"]["snn_over_qann"],
            "energy_snn_over_qann_zero_skip": run["energy"]["snn_over_qann_zero_skip"],
            "time_snn_over_ann": run["time"]["snn_over_ann"], "simulation": simulation,
            "closed_form_psnr_db": run["closed_form"]["paired"]["psnr_db"] if both else None,
            "count_differs_fraction": both["count_differs_fraction"] if both else None,
        })
        details.append({"label": run["label"], "policy": run["policy"], "spike_rate_per_site": run["spike_rate"]["per_site"],
                        "energy": run["energy"], "psnr_db_per_image": run["paired"]["psnr_db_per_image"]})
    settings = {"ann": ann, "record": str(record_folder), "grid": {k: str(v) for k, v in grid.__dict__.items()},
                **{k: str(v) for k, v in sampling.__dict__.items()}, "out": str(out)}
    with atomic_folder(out, overwrite=overwrite) as staging:
        _write(rows, details, staging, sampling, settings)
    return rows


def _write(rows: list[dict], details: list[dict], folder: Path, sampling: SamplingSettings,
           settings: dict[str, Any]) -> None:
    with open(folder / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "sweep.json").write_text(json.dumps({"settings": settings, "rows": rows, "runs": details}, indent=2))
    if all(r["energy_snn_over_ann"] is not None for r in rows):  # closed form counts no energy
        plot_pareto([f"{r['spiking']} T={r['timesteps']}" + ("" if r["threshold_scale"] == 1.0
                                                             else f" s={r['threshold_scale']}") for r in rows],
                    [r["energy_snn_over_ann"] for r in rows], [r["psnr_db"] for r in rows], folder / "pareto.png")
        plot_spike_rates({run["label"]: run["spike_rate_per_site"] for run in details}, folder / "spike_rates.png")
    lines = [f"# Threshold sweep ({sampling.num_samples} samples, {sampling.sampler} {sampling.steps} steps, "
             f"seed {sampling.seed})", "",
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


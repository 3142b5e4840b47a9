"""The PSNR-energy frontier over finished comparisons (`python eval/compare.py frontier`).

Each SNN run of the given ann-vs-snn reports is one point: its PSNR against the ANN and its
energy per UNet evaluation over the float ANN's, in both conventions (synaptic events, and units
x AC; eval/metrics/energy.py). Writes frontier.json (the rows), frontier.md (a table) and one
plot per convention with the Pareto front drawn. Runs simulated in closed form count no spikes
and are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...core.atomic import atomic_folder
from ...core.errors import SdmError
from .plots import plot_pareto

COLUMNS = ("point", "T", "level", "emission", "coding", "samples", "PSNR vs ANN (dB)", "energy / float ANN",
           "energy / zero-skip QANN", "units x AC / float ANN", "spikes per synapse")


def frontier_rows(reports: list[Path]) -> list[dict[str, Any]]:
    """One row per SNN run of each report (a folder holding report.json, or the file itself)."""
    rows = []
    for given in reports:
        path = given / "report.json" if given.is_dir() else given
        try:
            report = json.loads(path.read_text())
            runs = report["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SdmError(f"{given}: not an ann-vs-snn report (no readable report.json with runs)") from None
        for run in runs:
            energy = run.get("energy") or {}
            if energy.get("snn_over_ann") is None:
                raise SdmError(f"{given}: run {run['label']} counted no spikes (closed form): it has no energy to plot")
            policy = run.get("policy", {})
            rows.append({"point": f"{Path(given).name}/{run['label']}", "T": run["timesteps"],
                         "level": policy.get("spiking"), "emission": policy.get("emission"), "coding": run["coding"],
                         "samples": report["num_samples"], "psnr_db": run["paired"]["psnr_db"],
                         "events_over_ann": energy["snn_over_ann"],
                         "events_over_qann_zero_skip": energy["snn_over_qann_zero_skip"],
                         "units_over_ann": energy["units_x_ac"]["snn_over_ann"],
                         "spikes_per_synapse": energy["spikes_per_synapse"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['point']} | {r['T']} | {r['level']} | {r['emission']} | {r['coding']} | {r['samples']} | "
                     f"{r['psnr_db']:.2f} | {r['events_over_ann']:.3f} | {r['events_over_qann_zero_skip']:.3f} | "
                     f"{r['units_over_ann']:.3f} | {r['spikes_per_synapse']:.3f} |")
    return "\n".join(lines) + "\n"


def write_frontier(reports: list[Path], out: Path, overwrite: bool = False) -> list[dict[str, Any]]:
    rows = frontier_rows(reports)
    labels, psnr = [r["point"] for r in rows], [r["psnr_db"] for r in rows]
    with atomic_folder(out, overwrite=overwrite) as staging:
        (staging / "frontier.json").write_text(json.dumps(rows, indent=2))
        (staging / "frontier.md").write_text(markdown(rows))
        plot_pareto(labels, [r["events_over_ann"] for r in rows], psnr, staging / "frontier_events.png",
                    "energy SNN / float ANN (per UNet evaluation, synaptic events)")
        plot_pareto(labels, [r["units_over_ann"] for r in rows], psnr, staging / "frontier_units.png",
                    "energy SNN / float ANN (per UNet evaluation, units x AC)")
    return rows

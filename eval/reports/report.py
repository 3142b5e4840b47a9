"""The FID part of a report and the readable Markdown version of report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.fid import (FeatureStats, InceptionFeatures, cached_image_stats, fid_from_stats, file_sha256,
                           inception_score, inception_score_available)


class FidContext:
    """FID of ANN and SNN samples against a reference and against each other.

    The ANN's Inception features are computed once and reused for every SNN compared; with
    `cache` (the kept-batches folder) every model's statistics are also kept there, keyed by the
    samples' content, so a later comparison over the same samples skips the network.
    """

    def __init__(self, ann_images: np.ndarray, reference: FeatureStats | None, device: str,
                 reference_path: Path | None = None, cache: Path | None = None) -> None:
        self.extractor = InceptionFeatures(device=device)
        self.cache = cache
        self.reference = reference
        self.reference_sha256 = file_sha256(reference_path) if reference_path is not None else None
        self.ann_stats = cached_image_stats(ann_images, self.extractor, cache)
        self.device = device
        self.is_available, self.is_reason = inception_score_available()
        self.ann_is = self._inception_score(ann_images)

    @staticmethod
    def not_computed(num_samples: int) -> dict[str, Any]:
        return {"ann": None, "snn": None, "snn_vs_ann": None, "reference": None, "num_samples": num_samples,
                "inception_score": None}

    def _inception_score(self, images: np.ndarray) -> float | None:
        if not self.is_available or len(images) < 10:
            return None
        return inception_score(images, device=self.device)[0]

    def section(self, snn_images: np.ndarray) -> dict[str, Any]:
        snn_stats = cached_image_stats(snn_images, self.extractor, self.cache)
        ref = self.reference
        section: dict[str, Any] = {
            "ann": fid_from_stats(self.ann_stats, ref) if ref is not None else None,
            "snn": fid_from_stats(snn_stats, ref) if ref is not None else None,
            "snn_vs_ann": fid_from_stats(snn_stats, self.ann_stats),
            "reference": None if ref is None else {"source": ref.source, "split": ref.split, "count": ref.count,
                                                   "sha256": self.reference_sha256},
            "num_samples": len(snn_images),
        }
        snn_is = self._inception_score(snn_images)
        if snn_is is not None and self.ann_is is not None:
            section["inception_score"] = {"ann": self.ann_is, "snn": snn_is}
        else:
            section["inception_score"] = None
            section["inception_score_note"] = self.is_reason if not self.is_available else "needs >= 10 samples"
        return section


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """A table a person can read: one row per converted model."""
    lines = [
        "# ANN vs SNN",
        "",
        f"Source: `{report['ann']['origin']}` (fingerprint {report['ann']['fingerprint']}); "
        f"{report['num_samples']} samples, {report['sampler']} {report['steps']} steps, seed {report['seed']}, "
        f"device {report['device']}, TF32 {'on' if report.get('tf32') else 'off'}, "
        f"{report.get('processes', 1)} process(es).",
        "",
        "| model | spiking | T | PSNR (dB) | eps rel. L2 | eps cosine | spike rate | energy SNN/ANN | SNN/QANN | SNN/zero-skip QANN | SNN/ANN, units x AC | max payload | last-step units | time SNN/ANN | FID SNN vs ANN | FID ANN | FID SNN |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        fid = run["fid"]
        lines.append(
            f"| {run['label']} | {run.get('policy', {}).get('spiking', 'hybrid')} | {run['timesteps']} | "
            f"{_fmt(run['paired']['psnr_db'], 2)} | "
            f"{_fmt(run['paired']['eps_rel_l2'], 4)} | {_fmt(run['paired']['eps_cosine'], 4)} | "
            f"{_fmt(run['spike_rate']['mean'])} | {_fmt(run['energy']['snn_over_ann'])} | "
            f"{_fmt(run['energy']['snn_over_qann'])} | {_fmt(run['energy']['snn_over_qann_zero_skip'])} | "
            f"{_fmt(run['energy']['units_x_ac']['snn_over_ann'])} | {_fmt(run['energy']['max_payload'])} | "
            f"{_fmt(run['energy']['last_step_unit_fraction'])} | "
            f"{_fmt(run['time']['snn_over_ann'], 2)} | {_fmt(fid['snn_vs_ann'], 2)} | {_fmt(fid['ann'], 2)} | "
            f"{_fmt(fid['snn'], 2)} |"
        )
    reference = report["fid"]["reference"]
    lines += ["", "FID reference: " + (
        f"{reference['source']} ({reference['split']}, {reference['count']} images)" if reference else "none given"
    ) + f"; FID sample count {report['num_samples']}.",
        "",
        "Energy convention: " + report["energy"]["convention"] + "; per layer kind in report.json "
        "(`energy.by_kind_microjoules`).",
        "",
        "![grid](grid.png)",
        "",
        "![spike rates](spike_rates.png)",
    ]
    path.write_text("\n".join(lines) + "\n")

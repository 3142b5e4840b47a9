"""The comparisons behind `python eval/compare.py`: the source ANN and converted SNNs side by side
(`ann_vs_snn`), and one ANN's FID against reference statistics (`ann_fid`).

ann-vs-snn writes to its folder: report.json, report.md, samples_ann.npz, samples_snn.npz (one
SNN) or samples_snn_<label>.npz (several), grid.png (ANN row above each SNN row, same noise),
spike_rates.png, and metrics_vs_T.png when several SNNs are compared, and frontier.png (PSNR
against energy / float ANN in the synaptic-events convention, the Pareto front drawn) over the
step-simulated ones when there are several (the closed form counts no spikes, so it has no energy).
ann-fid writes report.json, samples_ann.npz and grid.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...converter.folder import check_same_source, load_converted
from ...core.atomic import atomic_folder, ensure_free_target
from ...core.images import save_grid_rows, save_npz_images, to_uint8
from ...core.settings import SamplingSettings
from ...pretrained.loading import SourceModel, load_source_model
from ..metrics.fid import FeatureStats, InceptionFeatures, cached_image_stats, fid_from_stats, file_sha256
from ..runs import distributed
from ..runs.paired import measure_snn, sample_ann
from .plots import plot_metric_curves, plot_pareto, plot_spike_rates
from .report import FidContext, write_markdown


def ann_fid(ann: str, reference_path: Path, sampling: SamplingSettings, out: Path,
            overwrite: bool, batches: Path | None = None) -> dict[str, Any] | None:
    """Sample the ANN from seeded noise and compare its Inception statistics with the reference.

    Under torchrun every rank samples its share; rank 0 alone measures and writes (others: None)."""
    ensure_free_target(out, overwrite)
    reference = FeatureStats.load(reference_path)
    source = load_source_model(ann)
    source.unet.to(sampling.device)
    _, run = sample_ann(source, sampling, batches)
    if not distributed.is_writer():
        return None
    images = to_uint8(run.samples)
    stats = cached_image_stats(images, InceptionFeatures(device=str(sampling.device)), batches)
    report = {
        "ann": source.describe(), "fid": fid_from_stats(stats, reference), "num_samples": sampling.num_samples,
        "sampler": sampling.sampler, "steps": sampling.steps, "seed": sampling.seed, "device": str(sampling.device),
        "tf32": sampling.tf32, "processes": distributed.world_size(),
        "reference": {"path": str(reference_path), "source": reference.source, "split": reference.split,
                      "count": reference.count, "sha256": file_sha256(reference_path)},
        "seconds_in_unet": run.unet_seconds,
    }
    with atomic_folder(out, overwrite=overwrite) as staging:
        save_npz_images(staging / "samples_ann.npz", images)
        save_grid_rows([images[:16]], staging / "grid.png", labels=["ANN"])
        (staging / "report.json").write_text(json.dumps(report, indent=2))
    return report


def ann_vs_snn(ann: str, snn_folders: list[Path], sampling: SamplingSettings, out: Path, overwrite: bool,
               reference_path: Path | None = None, fid: bool = False,
               simulation: str = "steps", coding: str = "rate", batches: Path | None = None) -> dict[str, Any] | None:
    """Sample the ANN and every SNN from the same noises; paired metrics, rates, energy, time, FID.
    `coding`: how the SNNs' steps simulation sends spikes ("rate" or "delta", converter/spiking/delta.py).

    Under torchrun every rank samples its share; rank 0 alone measures and writes (others: None)."""
    ensure_free_target(out, overwrite)
    source = load_source_model(ann)
    source.unet.to(sampling.device)
    snns = {}
    for label, folder in zip(labels_of(snn_folders), snn_folders):
        snn = load_converted(folder, device=str(sampling.device))
        check_same_source(snn, source, str(folder))
        snn.set_coding(coding)
        snns[label] = snn
    reference = FeatureStats.load(reference_path) if reference_path is not None else None
    noise, ann_run = sample_ann(source, sampling, batches)
    ann_images = to_uint8(ann_run.samples)
    runs = [measure_snn(snn, source, noise, ann_run, sampling, label, simulation, batches) for label, snn in snns.items()]
    if not distributed.is_writer():
        return None
    context = (FidContext(ann_images, reference, str(sampling.device), reference_path, cache=batches)
               if fid or reference is not None else None)
    for run in runs:
        run["fid"] = context.section(run["_images"]) if context else FidContext.not_computed(sampling.num_samples)
    with atomic_folder(out, overwrite=overwrite) as staging:
        save_npz_images(staging / "samples_ann.npz", ann_images)
        for run in runs:
            name = "samples_snn.npz" if len(runs) == 1 else f"samples_snn_{run['label']}.npz"
            save_npz_images(staging / name, run["_images"])
        save_grid_rows([ann_images[:16]] + [r["_images"][:16] for r in runs], staging / "grid.png",
                       labels=["ANN"] + [r["label"] for r in runs])
        plot_spike_rates({r["label"]: r["spike_rate"]["per_site"] for r in runs}, staging / "spike_rates.png")
        counted = [r for r in runs if r["energy"]["snn_over_ann"] is not None]
        if len(runs) > 1:
            curves = {"PSNR SNN vs ANN (dB)": [r["paired"]["psnr_db"] for r in runs],
                      "eps relative L2": [r["paired"]["eps_rel_l2"] for r in runs]}
            if len(counted) == len(runs):
                curves["energy SNN/ANN"] = [r["energy"]["snn_over_ann"] for r in runs]
            plot_metric_curves("SNN time steps T", [r["timesteps"] for r in runs], curves, staging / "metrics_vs_T.png")
        if len(counted) > 1:
            plot_pareto([r["label"] for r in counted], [r["energy"]["snn_over_ann"] for r in counted],
                        [r["paired"]["psnr_db"] for r in counted], staging / "frontier.png")
        report = _report(sampling, source, runs)
        (staging / "report.json").write_text(json.dumps(report, indent=2))
        write_markdown(report, staging / "report.md")
    return report


def labels_of(folders: list[Path]) -> list[str]:
    """One label per SNN folder: its name, or index-name where names repeat."""
    names = [Path(f).name for f in folders]
    return names if len(set(names)) == len(names) else [f"{i}-{n}" for i, n in enumerate(names)]


def _report(sampling: SamplingSettings, source: SourceModel, runs: list[dict]) -> dict:
    clean = [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs]
    first = clean[0]
    return {
        "ann": source.describe(),
        "num_samples": sampling.num_samples,
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "seed": sampling.seed,
        "device": str(sampling.device),
        "tf32": sampling.tf32,
        "processes": distributed.world_size(),
        **{k: first[k] for k in ("timesteps", "paired", "fid", "spike_rate", "energy", "time")},
        "runs": clean,
    }

"""Run one ANN and one or more converted SNNs on the same noise and measure everything.

This is the library behind `eval/compare.py ann-vs-snn`, the calibration sweeps and the
fidelity check of `sdm-convert`.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...converter.equivalence import ProbeRecorder, equivalence_section, probe_calls
from ...converter.spiking.model import SpikingUNet2DModel
from ...converter.spiking.simulation import check_choice
from ...core.diffusion import as_eps_function, initial_noise, sample_shape
from ...core.errors import SdmError
from ...core.images import save_grid_rows, to_uint8
from ...core.settings import SamplingSettings
from ...pretrained.loading import SourceModel, state_dict_fingerprint
from ..metrics.activity import Activity, ActivityMonitor
from ..metrics.energy import closed_form_energy, count_operations, energy_estimate
from . import distributed
from .batch_store import BatchStore
from .sampling import Trajectory, run_sampler

KEPT_BATCHES_NEED_CLOSED_FORM = ("kept batches hold samples, not spike counts: use --batches with --simulation "
                                 "closed-form (or leave --batches out)")
PEAK = 255.0
PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; means use this cap


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB between two uint8 batches (first axis = image, peak 255).

    Identical images give ``inf``: there is no noise to measure, and a finite cap would hide that.
    """
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        raise SdmError("psnr needs two numpy arrays")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise SdmError(f"psnr needs uint8 images, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.ndim < 2:
        raise SdmError(f"psnr needs two batches of the same shape, got {a.shape} and {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = np.mean(diff * diff, axis=tuple(range(1, a.ndim)))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(PEAK * PEAK / mse)


def batch_store(folder: Path | None, label: str, model: str, settings: SamplingSettings, simulation: str,
                paired: bool) -> BatchStore | None:
    """The store of one model's finished batches under `folder` (None: batches are not kept)."""
    if folder is None:
        return None
    identity = {"model": model, "sampler": settings.sampler, "steps": settings.steps, "seed": settings.seed,
                "batch_size": settings.batch_size, "simulation": simulation,
                "device": torch.device(settings.device).type, "tf32": settings.tf32,
                "eps_errors": (settings.eps_error_samples or True) if paired else False}
    return BatchStore(Path(folder) / label, identity)


def _sample(unet, noise: torch.Tensor, source: SourceModel, settings: SamplingSettings, desc: str,
            reference=None, store: BatchStore | None = None) -> Trajectory:
    """run_sampler over this process's share of the batches, gathered from every process."""
    part = run_sampler(unet, noise, settings.sampler, source.scheduler_config, settings.steps, settings.seed,
                       settings.batch_size, settings.device, reference=reference, desc=desc,
                       chunks=distributed.my_batches(len(noise), settings.batch_size), tf32=settings.tf32, store=store,
                       reference_samples=settings.eps_error_samples)
    return distributed.gather_trajectory(part)


def sample_ann(source: SourceModel, settings: SamplingSettings,
               batches: Path | None = None) -> tuple[torch.Tensor, Trajectory]:
    """The ANN's samples from the seeded noises, and those noises (for the SNNs to start from);
    `batches`: keep (and reuse) finished batches there (eval/runs/batch_store.py)."""
    noise = initial_noise(settings.num_samples, sample_shape(source.unet), settings.seed)
    store = batch_store(batches, "ann", source.fingerprint, settings, "ann", paired=False)
    return noise, _sample(as_eps_function(source.unet), noise, source, settings, "ANN sampling", store=store)


def measure_snn(snn: SpikingUNet2DModel, source: SourceModel, noise: torch.Tensor, ann_run: Trajectory,
                settings: SamplingSettings, label: str, simulation: str = "steps",
                batches: Path | None = None) -> dict[str, Any]:
    """Sample with the SNN from the ANN's noises and compute paired metrics, rates, energy, time.

    simulation: "steps" (spikes, rates, energy), "closed-form" (the quantised twin at the ANN's
    cost; no spikes to count), or "both": steps as the result, plus the closed form's metrics and
    an `equivalence` section (converter/equivalence.py) on inputs the step sampler visited.
    """
    check_choice(simulation)
    if batches is not None and simulation != "closed-form":
        raise SdmError(KEPT_BATCHES_NEED_CLOSED_FORM)
    if simulation == "closed-form":
        store = batch_store(batches, label, state_dict_fingerprint(snn.state_dict()), settings, simulation, paired=True)
        result = _measure(snn, source, noise, ann_run, settings, label, closed_form=True, store=store)
    else:
        probe = ProbeRecorder(as_eps_function(snn), probe_calls(settings.steps)) if simulation == "both" else None
        result = _measure(snn, source, noise, ann_run, settings, label, closed_form=False, eps=probe)
        if probe is not None:  # the closed form sends no spikes: it and the equivalence probe run rate-coded
            coding = snn.coding
            snn.set_coding("rate")
            try:
                closed = _measure(snn, source, noise, ann_run, settings, label, closed_form=True)
                ratio = closed["time"]["snn_seconds_per_unet_eval"] / result["time"]["snn_seconds_per_unet_eval"]
                result["closed_form"] = {key: closed[key] for key in ("paired", "time")}
                # rank 0 runs the first batch, whose calls the probe keeps; no collective inside
                result["equivalence"] = equivalence_section(snn, probe.inputs, ratio) if distributed.is_writer() else None
            finally:
                snn.set_coding(coding)
    result["simulation"] = simulation
    return result


def _measure(snn: SpikingUNet2DModel, source: SourceModel, noise: torch.Tensor, ann_run: Trajectory,
             settings: SamplingSettings, label: str, closed_form: bool, eps=None,
             store: BatchStore | None = None) -> dict[str, Any]:
    coding = snn.coding
    snn.set_simulation("closed-form" if closed_form else "steps")
    snn.set_monitor(not closed_form)
    try:
        activity = Activity.of(snn)
        with nullcontext() if closed_form else ActivityMonitor(snn, activity):
            run = _sample(eps or as_eps_function(snn), noise, source, settings, f"SNN sampling ({label})",
                          reference=as_eps_function(source.unet), store=store)
        activity = activity.summed(distributed.sum_counts)
        counts = distributed.sum_counts({name: (n.spike_count, n.neuron_steps) for name, n in snn.neurons().items()})
        rates = {name: spikes / max(steps, 1) for name, (spikes, steps) in counts.items()}
        total_spikes = sum(spikes for spikes, _ in counts.values())
        total_steps = sum(steps for _, steps in counts.values())
    finally:
        snn.set_monitor(False)
        snn.set_simulation("steps")
    ann_images, snn_images = to_uint8(ann_run.samples), to_uint8(run.samples)
    per_image = psnr(ann_images, snn_images)
    if closed_form:  # no spikes were simulated: nothing to count rates or energy from
        spike_rate = {"mean": None, "per_site": {}}
        energy: dict[str, Any] = closed_form_energy()
    else:
        spike_rate = {"mean": total_spikes / max(total_steps, 1), "per_site": rates}
        energy = energy_estimate(snn, count_operations(snn), activity, rates)
        energy["coding"] = coding
    ann_eval, snn_eval = ann_run.unet_seconds / ann_run.unet_calls, run.unet_seconds / run.unet_calls
    return {
        "label": label,
        "timesteps": snn.timesteps,
        "coding": coding,
        "policy": snn.policy.to_dict(),
        "paired": {
            "psnr_db": float(np.mean(np.minimum(per_image, PSNR_CAP_DB))),
            "psnr_db_per_image": [float(min(v, PSNR_CAP_DB)) for v in per_image],
            "eps_rel_l2": float(np.mean(run.eps_rel_l2)),
            "eps_rel_l2_per_step": run.eps_rel_l2,
            "eps_cosine": float(np.mean(run.eps_cosine)),
            "eps_cosine_per_step": run.eps_cosine,
            "eps_error_samples": 0 if run.eps_rel_l2_samples is None else len(run.eps_rel_l2_samples),
        },
        "spike_rate": spike_rate,
        "energy": energy,
        "time": {
            "ann_seconds_per_unet_eval": ann_eval,
            "snn_seconds_per_unet_eval": snn_eval,
            "ann_seconds_per_sample": ann_run.unet_seconds / settings.num_samples,
            "snn_seconds_per_sample": run.unet_seconds / settings.num_samples,
            "snn_over_ann": snn_eval / ann_eval,
        },
        "_images": snn_images,
    }


def fidelity_check(snn: SpikingUNet2DModel, source: SourceModel, settings: SamplingSettings, grid: Path,
                   simulation: str = "steps") -> dict[str, Any]:
    """The quick paired check `sdm-convert` runs: PSNR, eps error, spike rate, time, and a grid to
    look at; with simulation "both" also the closed form and the equivalence section."""
    noise, ann_run = sample_ann(source, settings)
    run = measure_snn(snn, source, noise, ann_run, settings, f"T={snn.timesteps}", simulation)
    save_grid_rows([to_uint8(ann_run.samples), run["_images"]], grid, labels=["ANN", f"SNN T={snn.timesteps}"])
    result = {
        "num_samples": settings.num_samples,
        "sampler": settings.sampler,
        "steps": settings.steps,
        "simulation": simulation,
        "psnr_db": run["paired"]["psnr_db"],
        "eps_rel_l2": run["paired"]["eps_rel_l2"],
        "eps_cosine": run["paired"]["eps_cosine"],
        "spike_rate": run["spike_rate"]["mean"],
        "energy_snn_over_ann": run["energy"]["snn_over_ann"],
        "seconds_per_unet_eval": {
            "ann": run["time"]["ann_seconds_per_unet_eval"],
            "snn": run["time"]["snn_seconds_per_unet_eval"],
        },
    }
    if "equivalence" in run:
        closed = run["closed_form"]["paired"]
        result["closed_form"] = {"psnr_db": closed["psnr_db"], "eps_rel_l2": closed["eps_rel_l2"]}
        result["equivalence"] = run["equivalence"]
    return result

"""Run one ANN and one or more converted SNNs on the same noise and measure everything.

This is the library behind `eval/compare.py ann-vs-snn` and the calibration sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdm.converter.model import SpikingUNet2DModel
from sdm.eval.energy import ActivityMonitor, count_operations, energy_estimate
from sdm.eval.images import psnr, to_uint8
from sdm.eval.sampling import Trajectory, as_eps_function, initial_noise, run_sampler
from sdm.pretrained.loading import SourceModel
from sdm.core.errors import SdmError

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; means use this cap


@dataclass
class PairedSettings:
    num_samples: int
    steps: int
    seed: int
    sampler: str = "ddim"
    batch_size: int = 16
    device: str | torch.device = "cpu"


class SourceMismatchError(SdmError):
    """A converted model was made from another source model than the ANN it is compared with."""


def check_same_source(snn: SpikingUNet2DModel, source: SourceModel, label: str) -> None:
    recorded = (snn.config.provenance or {}).get("source", {}).get("fingerprint")
    actual = source.describe()["fingerprint"]
    if recorded != actual:
        raise SourceMismatchError(
            f"{label} was converted from another model (fingerprint {recorded}) than the ANN given ({actual})"
        )


def sample_ann(source: SourceModel, settings: PairedSettings) -> tuple[torch.Tensor, Trajectory]:
    config = source.unet.config
    noise = initial_noise(settings.num_samples, (config.in_channels, config.sample_size, config.sample_size), settings.seed)
    run = run_sampler(as_eps_function(source.unet), noise, settings.sampler, source.scheduler_config, settings.steps,
                      settings.seed, settings.batch_size, settings.device, desc="ANN sampling")
    return noise, run


def measure_snn(snn: SpikingUNet2DModel, source: SourceModel, noise: torch.Tensor, ann_run: Trajectory,
                settings: PairedSettings, label: str) -> dict[str, Any]:
    """Sample with the SNN from the ANN's noises and compute paired metrics, rates, energy, time."""
    snn.set_monitor(True)
    try:
        with ActivityMonitor(snn) as activity:
            run = run_sampler(as_eps_function(snn), noise, settings.sampler, source.scheduler_config, settings.steps,
                              settings.seed, settings.batch_size, settings.device,
                              reference=as_eps_function(source.unet), desc=f"SNN sampling ({label})")
        rates = {name: n.spike_count / max(n.neuron_steps, 1) for name, n in snn.neurons().items()}
        total_spikes = sum(n.spike_count for n in snn.neurons().values())
        total_steps = sum(n.neuron_steps for n in snn.neurons().values())
    finally:
        snn.set_monitor(False)
    ann_images, snn_images = to_uint8(ann_run.samples), to_uint8(run.samples)
    per_image = psnr(ann_images, snn_images)
    energy = energy_estimate(snn, count_operations(snn), activity, rates)
    ann_eval, snn_eval = ann_run.unet_seconds / ann_run.unet_calls, run.unet_seconds / run.unet_calls
    return {
        "label": label,
        "timesteps": snn.timesteps,
        "policy": snn.policy.to_dict(),
        "paired": {
            "psnr_db": float(np.mean(np.minimum(per_image, PSNR_CAP_DB))),
            "psnr_db_per_image": [float(min(v, PSNR_CAP_DB)) for v in per_image],
            "eps_rel_l2": float(np.mean(run.eps_rel_l2)),
            "eps_rel_l2_per_step": run.eps_rel_l2,
            "eps_cosine": float(np.mean(run.eps_cosine)),
            "eps_cosine_per_step": run.eps_cosine,
        },
        "spike_rate": {"mean": total_spikes / max(total_steps, 1), "per_site": rates},
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

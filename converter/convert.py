"""The conversion lifecycle, in one place: validate -> calibrate or load a record -> choose
thresholds -> build the SNN once from the ANN -> finalize.

The spiking UNet is built once per conversion (a converted deep copy of the ANN, which is also
the convertibility check, so an unsupported module is refused before any calibration work); the
source fingerprint is hashed once (`SourceModel.fingerprint`); the ANN's training flag is
restored afterwards whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..calibration.record import CalibrationRecord
from ..calibration.sites import IDENTITY
from ..calibration.thresholds import input_stats, site_thresholds
from ..core.training import inference_mode
from ..pretrained.loading import SourceModel
from .layerwise import match_layerwise
from .spiking.mapping import INPUT_SITE
from .spiking.model import SpikingUNet2DModel
from .spiking.policy import ConversionPolicy


@dataclass
class Conversion:
    """What one conversion produced: the SNN, the record it was calibrated with, and the time each stage took."""

    snn: SpikingUNet2DModel
    record: CalibrationRecord
    seconds: dict[str, float]


def build(source: SourceModel, policy: ConversionPolicy) -> SpikingUNet2DModel:
    """The spiking copy of `source` (thresholds still unset) on the source's device; refuses an
    unconvertible module by name."""
    return SpikingUNet2DModel.from_ann(source.unet, policy, {"source": source.describe(),
                                                             "scheduler_config": source.scheduler_config})


def finalize(snn: SpikingUNet2DModel, source: SourceModel, record: CalibrationRecord, policy: ConversionPolicy,
             device: str | torch.device | None = None) -> SpikingUNet2DModel:
    """Thresholds chosen from `record` by `policy`, frozen norms, optional layer-wise matching, provenance.

    The result lives entirely on `device` (None: where the source's weights are), every buffer
    the conversion adds included; layer-by-layer matching runs there too, with the ANN.
    """
    device = next(source.unet.parameters()).device if device is None else torch.device(device)
    record.check_source(source.fingerprint)
    snn.to(device)
    provenance: dict[str, Any] = {
        **snn.config.provenance,
        "calibration": {k: v for k, v in record.meta.items() if k != "diffusion_timesteps"},
    }
    snn.register_to_config(provenance=provenance)
    options = dict(method=policy.threshold_method, percentile=policy.percentile, granularity=policy.granularity,
                   membrane_init=policy.membrane_init, bias_correction=policy.bias_correction)
    sites = snn.sites()
    record.require_sites([name for name in sites if name != INPUT_SITE])
    thresholds = {name: site_thresholds(input_stats(record) if name == INPUT_SITE else record.sites[name],
                                        policy.timesteps, signed=site.neuron.signed, **options,
                                        neg_scale=1.0 if name == INPUT_SITE or record.sites[name].activation == IDENTITY
                                        else policy.off_threshold_scale)
                  for name, site in sites.items()}
    snn.set_thresholds(thresholds)
    if policy.norm == "frozen":
        snn.set_frozen_norm_stats({name: (s.group_mean, s.group_var) for name, s in record.sites.items()})
    if policy.layerwise:
        with inference_mode(source.unet):
            match_layerwise(snn, source.unet.to(device), record, policy.matching_inputs, policy.bias_correction)
    return snn


def convert(source: SourceModel, record: CalibrationRecord, policy: ConversionPolicy,
            device: str | torch.device | None = None) -> SpikingUNet2DModel:
    """The spiking UNet of `source` with thresholds chosen from an existing `record` (sweeps, benchmarks)."""
    return finalize(build(source, policy), source, record, policy, device)


def convert_calibrating(source: SourceModel, policy: ConversionPolicy,
                        obtain_record: Callable[[SourceModel], CalibrationRecord],
                        device: str | torch.device | None = None) -> Conversion:
    """The whole lifecycle; `obtain_record` runs the calibration or loads a saved record."""
    begin = time.perf_counter()
    snn = build(source, policy)
    built = time.perf_counter()
    if device is not None:
        source.unet.to(device)
    started = time.perf_counter()
    with inference_mode(source.unet):
        record = obtain_record(source)
    record.check_source(source.fingerprint)
    calibrated = time.perf_counter()
    finalize(snn, source, record, policy, device)
    converted = time.perf_counter()
    return Conversion(snn=snn, record=record, seconds={"calibration": round(calibrated - started, 2),
                                                       "conversion": round(converted - calibrated + built - begin, 2)})

"""The conversion lifecycle: source ANN + calibration record + policy -> spiking UNet."""

from __future__ import annotations

from typing import Any

import torch

from sdm.calibration.record import CalibrationRecord
from sdm.calibration.thresholds import input_stats, site_thresholds
from sdm.converter.layerwise import match_layerwise
from sdm.converter.mapping import INPUT_SITE
from sdm.converter.model import SpikingUNet2DModel
from sdm.converter.policy import ConversionPolicy
from sdm.pretrained.loading import SourceModel


def convert(source: SourceModel, record: CalibrationRecord, policy: ConversionPolicy,
            device: str | torch.device | None = None) -> SpikingUNet2DModel:
    """Build the spiking UNet of `source` with thresholds chosen from `record` by `policy`.

    The result lives entirely on `device` (None: where the source's weights are), every buffer
    the conversion adds included; layer-by-layer matching runs there too, with the ANN.
    """
    device = next(source.unet.parameters()).device if device is None else torch.device(device)
    description = source.describe()
    record.check_source(description["fingerprint"])
    provenance: dict[str, Any] = {
        "source": description,
        "scheduler_config": source.scheduler_config,
        "calibration": {k: v for k, v in record.meta.items() if k != "diffusion_timesteps"},
    }
    snn = SpikingUNet2DModel.from_ann(source.unet, policy, provenance).to(device)
    options = dict(method=policy.threshold_method, percentile=policy.percentile, granularity=policy.granularity,
                   membrane_init=policy.membrane_init, bias_correction=policy.bias_correction)
    sites = snn.sites()
    record.require_sites([name for name in sites if name != INPUT_SITE])
    thresholds = {name: site_thresholds(input_stats(record) if name == INPUT_SITE else record.sites[name],
                                        policy.timesteps, signed=site.neuron.signed, **options)
                  for name, site in sites.items()}
    snn.set_thresholds(thresholds)
    if policy.norm == "frozen":
        snn.set_frozen_norm_stats({name: (s.group_mean, s.group_var) for name, s in record.sites.items()})
    if policy.layerwise:
        match_layerwise(snn, source.unet.to(device), record, policy.matching_inputs, policy.bias_correction)
    return snn

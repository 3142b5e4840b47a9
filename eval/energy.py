"""Operation counts and the energy estimate of the SDM papers (45 nm: 4.6 pJ/MAC, 0.9 pJ/AC).

ANN: every Conv2d/Linear MAC, the two attention matmuls (2 N^2 C per attention), and one
MAC-equivalent per element for each GroupNorm and activation. SNN: a spike-driven layer costs
one accumulate per input spike per fan-out, i.e. its MACs x firing rate x T; every analog
operation is counted as MACs: analog-per-step layers and attention T times, analog-once layers
once, and the GroupNorm + activation evaluated in each site's dendrite T times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sdm.converter.layers import SpikingActivation, SpikingAttention
from sdm.converter.model import SpikingUNet2DModel
from sdm.converter.operations import ANALOG_ONCE, ANALOG_PER_STEP, SPIKE_DRIVEN, classify_layers

PJ_PER_MAC = 4.6
PJ_PER_AC = 0.9


@dataclass
class OperationCounts:
    """Per-image, per-UNet-evaluation operation counts of one converted model at one T."""

    layer_macs: dict[str, float]  # dense MACs of each Conv2d/Linear for one image and one step
    attention_macs: float  # the two attention matmuls, one image, one step
    site_elements: dict[str, float]  # elements through GroupNorm + activation per site


@torch.no_grad()
def count_operations(snn: SpikingUNet2DModel) -> OperationCounts:
    """Dense operation counts per image and SNN step, measured with hooks on one call."""
    layer_macs: dict[str, float] = {}
    site_elements: dict[str, float] = {}
    attention = [0.0]
    handles = []

    def on_layer(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            images = output.shape[0]
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            else:
                per_output = module.in_features
            layer_macs[path] = output.numel() / images * per_output
        return hook

    def on_site(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            site_elements[path] = output.numel() / output.shape[0]
        return hook

    def on_attention(module: nn.Module, inputs, output) -> None:
        x = inputs[0]
        tokens, channels = x.shape[2] * x.shape[3], x.shape[1]
        attention[0] += 2.0 * tokens * tokens * channels

    for path, module in snn.unet.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer(path)))
        elif isinstance(module, SpikingActivation):
            handles.append(module.register_forward_hook(on_site(module.site)))
        elif isinstance(module, SpikingAttention):
            handles.append(module.register_forward_hook(on_attention))
    config = snn.config
    try:
        snn(torch.zeros(1, config.in_channels, config.sample_size, config.sample_size, device=snn.device), 0)
    finally:
        for handle in handles:
            handle.remove()
    return OperationCounts(layer_macs=layer_macs, attention_macs=attention[0], site_elements=site_elements)


def energy_estimate(snn: SpikingUNet2DModel, counts: OperationCounts, spike_rates: dict[str, float]) -> dict:
    """ANN vs SNN energy per image and UNet evaluation, with the operation breakdown."""
    steps = snn.timesteps
    kinds = classify_layers(snn)
    ann_macs = sum(counts.layer_macs.values()) + counts.attention_macs
    elementwise = 2.0 * sum(counts.site_elements.values())  # GroupNorm + activation per element
    snn_acs = snn_analog = 0.0
    for path, macs in counts.layer_macs.items():
        kind, site = kinds[path]
        if kind == SPIKE_DRIVEN:
            snn_acs += macs * spike_rates.get(site, 0.0) * steps
        elif kind == ANALOG_PER_STEP:
            snn_analog += macs * steps
        elif kind == ANALOG_ONCE:
            snn_analog += macs
    snn_analog += counts.attention_macs * steps
    snn_elementwise = elementwise * steps
    ann_pj = PJ_PER_MAC * (ann_macs + elementwise)
    snn_pj = PJ_PER_AC * snn_acs + PJ_PER_MAC * (snn_analog + snn_elementwise)
    return {
        "convention": "45 nm: 4.6 pJ per MAC, 0.9 pJ per AC; analog operations of the SNN counted as MACs",
        "ann": {"macs": ann_macs, "elementwise_macs": elementwise, "microjoules": ann_pj * 1e-6},
        "snn": {
            "acs": snn_acs,
            "analog_macs": snn_analog,
            "elementwise_macs": snn_elementwise,
            "microjoules": snn_pj * 1e-6,
        },
        "snn_over_ann": snn_pj / ann_pj,
        "synaptic_only_snn_over_ann": (PJ_PER_AC * snn_acs) / (PJ_PER_MAC * ann_macs),
    }

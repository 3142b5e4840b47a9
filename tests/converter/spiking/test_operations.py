"""operations.json: every layer classified; convolutions after sites (and conv_in with spike input) are spike-driven."""

import torch
from sdm.converter.convert import convert
from sdm.converter.spiking.operations import SPIKE_DRIVEN, classify_layers, operations_report
from sdm.converter.spiking.policy import ConversionPolicy


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_every_layer_is_classified_and_convs_after_sites_are_spike_driven(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy())
    kinds = classify_layers(snn)
    linear_layers = {p for p, m in snn.unet.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(kinds) == linear_layers
    assert kinds["down_blocks.0.resnets.0.conv1"] == (SPIKE_DRIVEN, "down_blocks.0.resnets.0.norm1")
    report = operations_report(snn)
    assert report["spiking_neurons"]["sites"] == len(snn.sites())


def test_spike_encoded_input_makes_conv_in_spike_driven(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(input_encoding="spikes", timesteps=64, threshold_method="max"))
    assert classify_layers(snn)["conv_in.1"] == (SPIKE_DRIVEN, "conv_in.input")
    assert "spike-driven" in operations_report(snn)["input_encoding"]
    analog = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=64, threshold_method="max"))
    x = tiny_record.inputs[:2]
    t = tiny_record.input_timesteps[:2]
    with torch.no_grad():
        ref = tiny_source.unet(x, t).sample
        assert rel_error(snn(x, t).sample, ref) < 2 * rel_error(analog(x, t).sample, ref) + 0.05

"""Converted-model folders: a bit-identical round trip, and refusal of weights that do not match the config."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from sdm.converter.convert import convert
from sdm.converter.folder import ConvertedModelError, load_converted, save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.atomic import atomic_folder


def test_save_and_reload_is_bit_identical(tmp_path, tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3, threshold_scale=0.9))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, tiny_record, staging)
    again = load_converted(tmp_path / "snn")
    assert again.policy == snn.policy
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(snn(x, 10).sample, again(x, 10).sample)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_loading_refuses_weights_that_do_not_match_the_model(tmp_path, tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, None, staging)
    weights = tmp_path / "snn" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors.pop(next(k for k in tensors if "threshold_pos" in k))
    save_file(tensors, str(weights))
    with pytest.raises(ConvertedModelError, match="do not match"):
        load_converted(tmp_path / "snn")

"""Device placement without a GPU: conversion and the SNN's forward pass on the meta device.

Meta tensors behave like CUDA tensors where placement bugs show: an operation that mixes a meta
tensor with a CPU tensor (other than a 0-d scalar) fails ("Tensor on device cpu is not on the
expected device meta"), and they hold no data, so any host read inside forward (float(),
.item(), .cpu()) fails too. A model that converts and runs on meta therefore creates nothing on
the CPU and does not synchronise with the host per site or step; the PyTorch-op path it runs is
the one CUDA uses (the fused kernel takes CPU tensors only).
"""

import itertools

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.finetune.trainable import set_trainable
from sdm.converter.spiking import site_kernel
from sdm.converter.spiking.layers import _cumsum
from sdm.converter.spiking.model import SpikingUNet2DModel
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import enable_tsm

from tests.conftest import make_tiny_unet

META = torch.device("meta")
POLICIES = [ConversionPolicy(timesteps=3), ConversionPolicy(timesteps=3, neuron="single-spike"),
            ConversionPolicy(timesteps=2, negative_lobe="relu", norm="frozen"),
            ConversionPolicy(timesteps=2, input_encoding="spikes", attention="instant")]


def off_device(module: torch.nn.Module, device: torch.device) -> list[str]:
    return [name for name, t in itertools.chain(module.named_parameters(), module.named_buffers())
            if t.device != device]


@pytest.mark.parametrize("policy", POLICIES)
def test_conversion_puts_every_parameter_and_buffer_on_the_target_device(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy, device=META)
    assert off_device(snn, META) == []
    assert snn.sites() and all(site.output_shift.device == META for site in snn.sites().values())
    set_trainable(snn, "thresholds")  # TSM factors and trainable thresholds, created after conversion
    assert off_device(snn, META) == []


def test_conversion_defaults_to_the_source_models_device(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    assert off_device(snn, torch.device("cpu")) == []


def test_a_spiking_copy_lives_where_its_ann_lives():
    snn = SpikingUNet2DModel.from_ann(make_tiny_unet().to(META), ConversionPolicy(timesteps=2))
    assert off_device(snn, META) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_the_snn_runs_on_the_device_with_counters_on_it(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy, device=META)
    enable_tsm(snn)
    snn.set_monitor(True)
    x = torch.randn(3, 3, 8, 8, device=META)
    assert not site_kernel.applicable(x)
    with torch.no_grad():
        out = snn(x, torch.tensor([10, 500, 900], device=META)).sample
    assert out.device == META and out.shape == x.shape
    for neuron in snn.neurons().values():
        assert neuron._spikes.device == META  # accumulated where the spikes are, never read per step
        assert neuron.neuron_steps > 0
    out = snn(x.clone().requires_grad_(True), 300).sample  # the autograd (fine-tuning) path
    out.sum().backward()
    assert all(site.tsm.grad is not None and site.tsm.grad.device == META for site in snn.sites().values())


def test_running_means_accumulate_in_float64_like_cpu_cumsum():
    # CPU cumsum already accumulates float32 in float64; asking for it makes CUDA do the same.
    seq = torch.randn(16, 4, 1000, generator=torch.Generator().manual_seed(0)) * 100
    assert torch.equal(_cumsum(seq), seq.cumsum(dim=0))
    sequential = seq.clone()
    for t in range(1, len(seq)):
        sequential[t] = sequential[t - 1] + seq[t]  # float32 accumulation, as CUDA's own cumsum
    assert not torch.equal(_cumsum(seq), sequential)

"""Spiking layers equal what they replace: attention written out, work constant over time computed once,
and the in-place inference path equal to the autograd path."""

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.spiking.policy import ConversionPolicy


def test_work_constant_over_time_is_computed_once_with_the_same_result(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3))
    x, t = tiny_record.inputs[:2], tiny_record.input_timesteps[:2]
    with torch.no_grad():
        fast = snn(x, t).sample
        snn.unet.conv_in = snn.unet.conv_in.module  # reference path: recompute for every time step
        snn.unet.time_embedding = snn.unet.time_embedding.module
        reference = snn(x, t).sample
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_dim", [None, 8])
def test_written_out_attention_equals_diffusers_attention(head_dim):
    from sdm.converter.spiking.layers import SpikingAttention

    from tests.conftest import make_tiny_unet

    attention = make_tiny_unet(attention_head_dim=head_dim).down_blocks[1].attentions[0]
    x = torch.randn(3, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(SpikingAttention(attention, 1, "instant")(x), attention(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", [ConversionPolicy(timesteps=3), ConversionPolicy(timesteps=4, negative_lobe="relu")])
def test_in_place_inference_equals_the_autograd_path(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = snn(x, 300).sample
    reference = snn(x.clone().requires_grad_(True), 300).sample.detach()
    assert torch.equal(fast, reference)

"""Speed paths give the reference path's outputs: fused kernel, in-place inference, batch passes."""

import pytest
import torch

from sdm.converter import site_kernel
from sdm.converter.convert import convert
from sdm.converter.policy import ConversionPolicy
from sdm.converter.tsm import enable_tsm


@pytest.mark.parametrize("policy", [ConversionPolicy(timesteps=3), ConversionPolicy(timesteps=4, negative_lobe="relu")])
def test_in_place_inference_equals_the_autograd_path(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = snn(x, 300).sample
    reference = snn(x.clone().requires_grad_(True), 300).sample.detach()
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("policy", [ConversionPolicy(timesteps=5, threshold_scale=1.05),
                                    ConversionPolicy(timesteps=3, negative_lobe="relu", norm="frozen"),
                                    ConversionPolicy(timesteps=2, input_encoding="spikes", attention="instant")])
def test_fused_sites_equal_the_tensor_op_path(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy)
    enable_tsm(snn)
    with torch.no_grad():
        for site in snn.sites().values():
            site.tsm.uniform_(0.8, 1.2)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    counts = []
    with torch.no_grad():
        snn.set_monitor(True)
        fused = snn(x, 300).sample
        counts.append({name: (n.spike_count, n.neuron_steps) for name, n in snn.neurons().items()})
        snn.set_monitor(True)
        with site_kernel.disabled():  # the PyTorch ops: what CUDA runs
            reference = snn(x, 300).sample
        counts.append({name: (n.spike_count, n.neuron_steps) for name, n in snn.neurons().items()})
    assert torch.equal(fused, reference)
    assert counts[0] == counts[1] and sum(c for c, _ in counts[0].values()) > 0


def test_splitting_the_batch_into_passes_does_not_change_outputs(tiny_source, tiny_record):
    # float64: the convolutions' batch-size-dependent rounding can then not flip a spike
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4)).double()
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([10, 50, 100, 200, 400, 700, 999])
    outputs = []
    with torch.no_grad():
        for per_pass in (None, 1, 3, 7):
            snn.set_inputs_per_pass(per_pass)
            outputs.append(snn(x, t).sample)
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=0, atol=1e-12)


def test_inputs_per_pass_must_be_positive(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    with pytest.raises(ValueError, match="inputs per pass"):
        snn.set_inputs_per_pass(0)


def test_pass_size_rule_per_device(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    assert snn._pass_size(torch.empty(10, 3, 32, 32)) == 3  # CPU: ceil(B / T) inputs, ~B rows
    # elsewhere (CUDA; meta stands in): the whole batch up to GPU_PASS_ROWS rows of 32x32, else equal passes
    assert snn._pass_size(torch.empty(1000, 3, 32, 32, device="meta")) == 1000
    assert snn._pass_size(torch.empty(3000, 3, 32, 32, device="meta")) == 1000
    assert snn._pass_size(torch.empty(1000, 3, 64, 64, device="meta")) == 250
    snn.set_inputs_per_pass(7)
    assert snn._pass_size(torch.empty(1000, 3, 32, 32, device="meta")) == 7

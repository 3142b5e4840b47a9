"""QAT through the quantised twin (converter/finetune/qat.py) on the tiny model: what is trainable, that
training changes the SNN the steps simulate, adapters merge exactly, and the refusals."""

import pytest
import torch
import torch.nn.functional as F
from sdm.converter.convert import convert
from sdm.converter.finetune import qat
from sdm.converter.finetune.trainable import clamp_thresholds_, make_parameters
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import enable_tsm

from tests.conftest import TWIN_INPUTS, TWIN_TIMESTEPS, steps_and_twin

X, TIMES = TWIN_INPUTS, TWIN_TIMESTEPS


def train(snn, source, weights, steps=12, lr=0.02):
    named = qat.prepare(snn, weights, rank=2)
    optimizer = torch.optim.Adam([p for _, p in named], lr=lr)
    with torch.no_grad():
        target = source.unet(X, TIMES).sample
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(snn(X, TIMES).sample, target).backward()
        optimizer.step()
        clamp_thresholds_(snn)
    return named


def test_prepare_trains_the_twin_with_lsq_scaled_threshold_gradients(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    keys = set(snn.state_dict())
    with torch.no_grad():
        before = snn(X, TIMES).sample
    named = qat.prepare(snn, "none")
    sites = snn.sites()
    assert snn.simulation == "closed-form" and set(snn.state_dict()) == keys
    assert {n.rsplit(".", 1)[1] for n, _ in named} == {"threshold_pos", "threshold_neg", "output_shift"}
    assert len(named) == 3 * len(sites)
    with torch.no_grad():
        torch.testing.assert_close(snn(X, TIMES).sample, before, rtol=1e-4, atol=1e-5)  # the twin computes the SNN
    snn(X, TIMES).sample.square().sum().backward()
    scaled = next(iter(sites.values()))
    assert qat.activations_per_threshold(snn)[scaled.site] == 64  # the first site sees 8 x 8 inputs
    plain = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))  # the same twin, unscaled
    plain.set_simulation("closed-form")
    make_parameters(plain, shifts=True)
    plain(X, TIMES).sample.square().sum().backward()
    unscaled = next(iter(plain.sites().values()))
    assert unscaled.neuron.threshold_pos.grad.abs().sum() > 0
    # LSQ's scale g = 1 / sqrt(N * T), N = H * W per channel threshold
    torch.testing.assert_close(scaled.neuron.threshold_pos.grad, unscaled.neuron.threshold_pos.grad / (64 * 4) ** 0.5)


@pytest.mark.parametrize("weights", ["none", "lora", "all"])
def test_trained_model_is_a_plain_snn_whose_steps_equal_its_twin(tiny_source, tiny_record, weights):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    keys, original = set(snn.state_dict()), {k: v.clone() for k, v in snn.state_dict().items()}
    thresholds = qat.thresholds_of(snn)
    train(snn, tiny_source, weights)
    with torch.no_grad():
        trained = snn(X, TIMES).sample  # closed form, adapters still separate
    qat.finish(snn)
    assert snn.simulation == "steps" and set(snn.state_dict()) == keys
    assert not any(p.requires_grad for p in snn.parameters())
    state = snn.state_dict()
    changed = {k for k in keys if not torch.equal(state[k], original[k])}
    assert any(k.endswith("threshold_pos") for k in changed) and any(k.endswith("output_shift") for k in changed)
    assert any(k.endswith("conv1.weight") for k in changed) == (weights != "none")
    assert all(float(site.neuron.threshold_neg.min()) > 0 and float(site.neuron.threshold_pos.min()) > 0
               for site in snn.sites().values())
    steps, twin = steps_and_twin(snn)
    torch.testing.assert_close(steps, twin, rtol=0, atol=1e-9)
    with torch.no_grad():
        snn.set_simulation("closed-form")
        torch.testing.assert_close(snn(X, TIMES).sample, trained, rtol=1e-4, atol=1e-5)  # merged adapters: same model
    changes = qat.threshold_changes(thresholds, snn)
    assert set(changes) >= {"down.norm1", "up.norm2", "out.conv_norm_out"}


def test_thresholds_stay_positive_under_a_push_to_zero(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    named = qat.prepare(snn, "none")
    optimizer = torch.optim.SGD([p for n, p in named if "threshold" in n], lr=1e6)
    for _ in range(2):
        optimizer.zero_grad()
        sum(p.sum() for n, p in named if "threshold" in n).backward()
        optimizer.step()
        clamp_thresholds_(snn)
    values = torch.cat([p.detach() for n, p in named if "threshold" in n])
    assert float(values.min()) > 0


def test_models_without_an_equal_twin_are_refused(tiny_source, tiny_record):
    cases = [
        (ConversionPolicy(timesteps=4, neuron="single-spike"), "single-spike"),
        (ConversionPolicy(timesteps=4, max_payload=1, emission="eager"), "max-payload"),
        (ConversionPolicy(timesteps=4, attention="instant"), "per-step attention"),
    ]
    for policy, message in cases:
        with pytest.raises(qat.QatError, match=message):
            qat.prepare(convert(tiny_source, tiny_record, policy))
    tsm = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    enable_tsm(tsm)
    with pytest.raises(qat.QatError, match="TSM model"):
        qat.prepare(tsm)
    with pytest.raises(qat.QatError, match="unknown QAT weight set"):
        qat.prepare(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2)), "some")


@pytest.mark.parametrize("level", ["residual", "full"])
def test_every_spiking_level_trains_and_its_steps_equal_its_twin(tiny_source, tiny_record, level):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4, spiking=level))
    thresholds = qat.thresholds_of(snn)
    train(snn, tiny_source, "lora", steps=3)
    qat.finish(snn)
    assert any(not torch.equal(thresholds[name]["threshold_pos"], site.neuron.threshold_pos)
               for name, site in snn.sites().items())
    steps, twin = steps_and_twin(snn)
    torch.testing.assert_close(steps, twin, rtol=0, atol=1e-9)

"""Closed form vs step simulation on tiny converted UNets; refusals; the twin is trainable."""

import json

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.finetune.trainable import set_trainable
from sdm.converter.folder import ConvertedModelError, load_converted, save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.simulation import SimulationError
from sdm.converter.spiking.tsm import enable_tsm

POLICIES = [
    ConversionPolicy(timesteps=1),
    ConversionPolicy(timesteps=2, threshold_scale=1.1),
    ConversionPolicy(timesteps=4, bias_correction=False, granularity="layer"),
    ConversionPolicy(timesteps=4, negative_lobe="relu", membrane_init=0.0),
    ConversionPolicy(timesteps=8, input_encoding="spikes", norm="frozen"),
    ConversionPolicy(timesteps=4, spiking="residual"),
    ConversionPolicy(timesteps=3, spiking="full"),
    ConversionPolicy(timesteps=4, spiking="full", emission="eager"),
    ConversionPolicy(timesteps=5, spiking="full", emission="hysteresis", emission_margin=2),
    ConversionPolicy(timesteps=4, spiking="full", emission="hysteresis", attention_probabilities="spiking"),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"T{p.timesteps}-{p.spiking}-{p.emission}")
def test_closed_form_equals_the_step_simulation(tiny_source, tiny_record, policy):
    # float64: rounding that differs between one pass and T steps stays far below any threshold
    snn = convert(tiny_source, tiny_record, policy).double()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([900, 400, 20])
    with torch.no_grad():
        steps = snn(x, t).sample
        snn.set_simulation("closed-form")
        closed = snn(x, t).sample
        snn.set_simulation("steps")
        again = snn(x, t).sample
    torch.testing.assert_close(closed, steps, rtol=0, atol=1e-9)
    assert torch.equal(again, steps)


def test_closed_form_runs_the_unet_once_on_the_batch(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    rows = []
    handle = snn.unet.conv_out.register_forward_hook(lambda _m, i, _o: rows.append(i[0].shape[0]))
    snn.set_simulation("closed-form")
    with torch.no_grad():
        snn(torch.randn(5, 3, 8, 8), 10)
    handle.remove()
    assert rows == [5]


def test_single_spike_model_differs_from_its_twin(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=8, neuron="single-spike")).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        steps = snn(x, 500).sample
        snn.set_simulation("closed-form")
        closed = snn(x, 500).sample
    assert (closed - steps).abs().max() > 1e-4


def test_unknown_mode_tsm_and_instant_attention_are_refused(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    with pytest.raises(SimulationError, match="unknown simulation 'fast'"):
        snn.set_simulation("fast")
    enable_tsm(snn)
    snn.set_simulation("closed-form")  # p = 1 everywhere: TSM is the identity, the twin applies
    snn.set_simulation("steps")
    with torch.no_grad():
        next(iter(snn.sites().values())).tsm[0] = 1.2
    with pytest.raises(SimulationError, match="TSM model"):
        snn.set_simulation("closed-form")
    assert snn.simulation == "steps"
    instant = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2, attention="instant"))
    with pytest.raises(SimulationError, match="attention instant"):
        instant.set_simulation("closed-form")


def test_a_folder_from_before_exact_neurons_is_refused_with_how_to_recreate_it(tmp_path, tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    save_converted(snn, tiny_record, tmp_path)
    load_converted(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("neuron", "max_payload"):
        del config["policy"][key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertedModelError, match=r"earlier version.*sdm-convert --record .* -T 2") as error:
        load_converted(tmp_path)
    assert "\n" not in str(error.value)


def test_twin_is_differentiable_with_straight_through_gradients(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    set_trainable(snn, "thresholds")
    snn.set_simulation("closed-form")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        reference = snn(x, 300).sample
    out = snn(x, 300).sample
    assert torch.equal(out.detach(), reference)  # the estimator changes gradients, not values
    out.pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    site = snn.sites()["conv_norm_out"]
    assert site.neuron.threshold_pos.grad is not None and site.neuron.threshold_pos.grad.abs().sum() > 0

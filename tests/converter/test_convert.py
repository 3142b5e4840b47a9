"""The conversion lifecycle: the UNet is built once, the fingerprint hashed once, the ANN's mode restored."""

import pytest
import torch
from sdm.converter import convert as lifecycle
from sdm.converter.spiking import model as model_module
from sdm.converter.spiking.mapping import UnsupportedModuleError
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.pretrained import loading

from tests.conftest import make_tiny_source


def test_one_conversion_builds_the_spiking_unet_once_and_hashes_the_source_once(tiny_record, monkeypatch):
    source = make_tiny_source()
    built, hashed = [], []
    convert_modules, fingerprint = model_module.convert_unet_modules, loading.state_dict_fingerprint
    monkeypatch.setattr(model_module, "convert_unet_modules", lambda *a: built.append(1) or convert_modules(*a))
    monkeypatch.setattr(loading, "state_dict_fingerprint", lambda sd: hashed.append(1) or fingerprint(sd))
    tiny_record.meta["source_fingerprint"] = source.fingerprint
    result = lifecycle.convert_calibrating(source, ConversionPolicy(timesteps=2), lambda model: tiny_record)
    assert len(built) == 1 and len(hashed) == 1
    assert result.snn.config.provenance["source"]["fingerprint"] == source.fingerprint
    assert set(result.seconds) == {"calibration", "conversion"}


def test_an_unconvertible_model_is_refused_before_calibration(tiny_record):
    source = make_tiny_source(down_block_types=("SkipDownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "SkipUpBlock2D"))
    calls = []
    with pytest.raises(UnsupportedModuleError, match="SkipDownBlock2D at down_blocks.0"):
        lifecycle.convert_calibrating(source, ConversionPolicy(), lambda model: calls.append(1))
    assert calls == []


def test_the_ann_keeps_its_training_flag_when_calibration_fails(tiny_record):
    source = make_tiny_source()
    source.unet.train()
    seen = []

    def failing(model):
        seen.append(model.unet.training)
        raise RuntimeError("calibration failed")

    with pytest.raises(RuntimeError):
        lifecycle.convert_calibrating(source, ConversionPolicy(timesteps=2), failing)
    assert seen == [False] and source.unet.training


def test_a_record_of_another_model_is_refused(tiny_source, tiny_record):
    other = make_tiny_source(seed=1)
    with pytest.raises(Exception, match="from another model"):
        lifecycle.convert(other, tiny_record, ConversionPolicy(timesteps=2))


def test_the_ann_is_left_untouched(tiny_source, tiny_record):
    before = {k: v.clone() for k, v in tiny_source.unet.state_dict().items()}
    lifecycle.convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2, layerwise=True, matching_inputs=2))
    after = tiny_source.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_off_threshold_scale_coarsens_only_the_silu_sites_negative_side(tiny_source, tiny_record):
    from sdm.calibration.sites import IDENTITY

    plain = lifecycle.convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4, spiking="residual"))
    coarse = lifecycle.convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4, spiking="residual",
                                                                          off_threshold_scale=2.0))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    spikes = []
    for snn in (plain, coarse):
        snn.set_monitor(True)
        with torch.no_grad():
            snn(x, torch.tensor([100, 700]))
        spikes.append(sum(n.spike_count for n in snn.neurons().values()))
    for name, site in coarse.sites().items():
        before = plain.sites()[name].neuron
        factor = 1.0 if tiny_record.sites[name].activation == IDENTITY else 2.0
        assert torch.equal(site.neuron.threshold_neg, before.threshold_neg * factor), name
        assert torch.equal(site.neuron.threshold_pos, before.threshold_pos), name
    assert spikes[1] < spikes[0]

"""TSM factors: p = 1 changes nothing, and a TSM model round-trips bit for bit."""

import json

import torch
from sdm.converter.convert import convert
from sdm.converter.finetune.trainable import set_trainable
from sdm.converter.folder import load_converted, save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import enable_tsm, has_tsm, tsm_values
from sdm.core.atomic import atomic_folder


def test_p_one_reproduces_the_plain_snn_exactly(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    x, t = tiny_record.inputs[:4], tiny_record.input_timesteps[:4]
    with torch.no_grad():
        plain = snn(x, t).sample
        enable_tsm(snn)
        assert has_tsm(snn) and snn.config.tsm
        assert torch.equal(snn(x, t).sample, plain)
        keys = set(snn.state_dict())
        set_trainable(snn, "all")
        assert set(snn.state_dict()) == keys  # trainable thresholds keep their state-dict names
        assert torch.equal(snn(x, t).sample, plain)
    assert all(v == [1.0, 1.0] for v in tsm_values(snn).values()) and len(tsm_values(snn)) == len(snn.sites())
    with torch.enable_grad():  # the surrogate-gradient path computes the same forward values
        torch.testing.assert_close(snn(x, t).sample, plain, rtol=1e-5, atol=1e-6)


def test_tsm_model_round_trips_bit_identically(tmp_path, tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    set_trainable(snn, "thresholds")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for _, p in set_trainable(snn, "thresholds"):
            p.mul_(1 + 0.1 * torch.rand(p.shape, generator=generator))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, tiny_record, staging)  # saved while thresholds are still Parameters
    again = load_converted(tmp_path / "snn")
    assert json.loads((tmp_path / "snn" / "config.json").read_text())["tsm"] is True
    before, after = snn.state_dict(), again.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert tsm_values(again) == tsm_values(snn)
    x, t = tiny_record.inputs[:2], tiny_record.input_timesteps[:2]
    with torch.no_grad():
        assert torch.equal(snn(x, t).sample, again(x, t).sample)
    plain = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    assert not has_tsm(plain) and not any(k.endswith(".tsm") for k in plain.state_dict())



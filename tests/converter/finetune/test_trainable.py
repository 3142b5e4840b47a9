"""The trainable sets of a fine-tuning run: exactly one nested set requires grad; an unknown one is refused."""

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.finetune.trainable import TrainableError, freeze, set_trainable
from sdm.converter.spiking.policy import ConversionPolicy


def test_trainable_sets(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    sites = len(snn.sites())
    assert {n.rsplit(".", 1)[1] for n, _ in set_trainable(snn, "p")} == {"tsm"}
    named = set_trainable(snn, "thresholds")
    assert len(named) == 3 * sites and {n.rsplit(".", 1)[1] for n, _ in named} == {"tsm", "threshold_pos", "threshold_neg"}
    named = set_trainable(snn, "all")
    assert len(named) == len(list(snn.parameters())) and sum(n.endswith(".output_shift") for n, _ in named) == sites
    freeze(snn)
    assert not any(p.requires_grad for p in snn.parameters())
    assert all(isinstance(site.neuron.threshold_pos, torch.Tensor) and "threshold_pos" in site.neuron._buffers
               for site in snn.sites().values())
    with pytest.raises(TrainableError, match="unknown trainable set"):
        set_trainable(snn, "weights")

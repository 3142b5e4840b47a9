"""The module-tree walk: every policy option converts and runs."""

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.spiking.policy import ConversionPolicy


@pytest.mark.parametrize("policy", [
    ConversionPolicy(negative_lobe="relu"),
    ConversionPolicy(norm="frozen"),
    ConversionPolicy(attention="instant"),
    ConversionPolicy(input_encoding="spikes"),
    ConversionPolicy(input_encoding="spikes", layerwise=True, matching_inputs=4),
    ConversionPolicy(granularity="layer", threshold_method="percentile", percentile=99.0),
])
def test_every_policy_option_converts_and_runs(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy)
    with torch.no_grad():
        out = snn(torch.randn(1, 3, 8, 8), 50).sample
    assert out.shape == (1, 3, 8, 8) and torch.isfinite(out).all()

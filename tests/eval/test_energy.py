"""Operation counts and the energy estimate: what each layer kind costs, per the 45 nm convention."""

import pytest

from sdm.converter.convert import convert
from sdm.converter.operations import ANALOG_ONCE, classify_layers
from sdm.converter.policy import ConversionPolicy
from sdm.eval.energy import PJ_PER_AC, PJ_PER_MAC, count_operations, energy_estimate


def test_energy_counts_follow_the_spike_rate(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    counts = count_operations(snn)
    silent = energy_estimate(snn, counts, {name: 0.0 for name in counts.site_elements})
    busy = energy_estimate(snn, counts, {name: 0.5 for name in counts.site_elements})
    assert silent["snn"]["acs"] == 0.0
    assert busy["snn"]["analog_macs"] == silent["snn"]["analog_macs"]
    # ACs grow linearly with the rate; their energy is 0.9 pJ each
    assert busy["snn"]["microjoules"] - silent["snn"]["microjoules"] == pytest.approx(
        busy["snn"]["acs"] * PJ_PER_AC * 1e-6)
    dense = sum(counts.layer_macs.values()) + counts.attention_macs
    assert busy["ann"]["macs"] == pytest.approx(dense)
    assert busy["ann"]["microjoules"] == pytest.approx(PJ_PER_MAC * 1e-6 * (dense + busy["ann"]["elementwise_macs"]))
    # a 3x3 conv on 8x8 with 16 in / 16 out channels: 8*8*16*16*9 MACs per image and step
    assert counts.layer_macs["down_blocks.0.resnets.0.conv1"] == 8 * 8 * 16 * 16 * 9


def test_analog_work_scales_with_T_and_analog_once_layers_do_not(tiny_source, tiny_record):
    results = {}
    for t in (2, 4):
        snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=t))
        counts = count_operations(snn)
        results[t] = (energy_estimate(snn, counts, {n: 0.0 for n in counts.site_elements}), counts, snn)
    (two, counts2, snn2), (four, counts4, _) = results[2], results[4]
    once = sum(m for path, m in counts2.layer_macs.items() if classify_layers(snn2)[path][0] == ANALOG_ONCE)
    # silent neurons: every remaining SNN cost is analog; doubling T doubles all but the analog-once layers
    assert four["snn"]["analog_macs"] - once == pytest.approx(2 * (two["snn"]["analog_macs"] - once))
    assert four["ann"] == two["ann"] and counts2.layer_macs == counts4.layer_macs

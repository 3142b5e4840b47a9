"""NIR: what blocks an export follows the policy."""

from sdm.converter.convert import convert
from sdm.converter.export.nir_export import nir_blockers
from sdm.converter.spiking.policy import ConversionPolicy


def test_nir_blockers_follow_the_policy(tiny_source, tiny_record):
    relu = convert(tiny_source, tiny_record, ConversionPolicy(negative_lobe="relu"))
    assert "signed IF neuron" not in nir_blockers(relu)
    assert len(nir_blockers(relu)["expectation-compensated dendrite"]) == len(relu.sites())

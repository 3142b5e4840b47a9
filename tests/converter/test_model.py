"""The converted model behaves like a diffusers model, for several policies (the shared tester)."""

from sdm.converter.convert import convert
from sdm.converter.policy import ConversionPolicy
from sdm.converter.tsm import enable_tsm
from tests.conftest import ConvertedModelTester


class TestDefaultPolicy(ConvertedModelTester):
    policy = ConversionPolicy(timesteps=2)


class TestReluFrozenNormSpikeInput(ConvertedModelTester):
    policy = ConversionPolicy(timesteps=3, negative_lobe="relu", norm="frozen", input_encoding="spikes",
                              threshold_scale=0.9)


class TestTsmModel(ConvertedModelTester):
    policy = ConversionPolicy(timesteps=2)

    def make_model(self, source, record):
        snn = convert(source, record, self.policy)
        enable_tsm(snn)
        for site in snn.sites().values():
            site.tsm.data.mul_(0.9)
        return snn


def test_threshold_scale_lives_in_the_policy(tiny_source, tiny_record):
    """The policy saved and reported always matches the neurons (eval/sweep.py changes the scale)."""
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    snn.set_threshold_scale(1.2)
    assert snn.policy.threshold_scale == 1.2 == snn.config.policy["threshold_scale"]
    assert {n.threshold_scale for n in snn.neurons().values()} == {1.2}

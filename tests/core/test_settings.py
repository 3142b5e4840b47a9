"""Validation before work: comma lists and ranges, each a one-line error."""

import pytest
from sdm.core.errors import SdmError
from sdm.core.settings import SamplingSettings, parse_list


def test_comma_lists_parse_or_fail_in_one_line():
    assert parse_list("4, 8,,16", "--timesteps") == [4, 8, 16]
    assert parse_list("0.9,1.1", "--scales", float) == [0.9, 1.1]
    with pytest.raises(SdmError, match=r"^--timesteps must be comma-separated integers, got '4,abc'$"):
        parse_list("4,abc", "--timesteps")


@pytest.mark.parametrize("field, value, message", [
    ("num_samples", 0, "--num-samples must be >= 1"), ("steps", 0, "--steps must be >= 1"),
    ("batch_size", 0, "--batch-size must be >= 1"), ("sampler", "euler", "--sampler must be one of"),
])
def test_sampling_settings_refuse_out_of_range_values(field, value, message):
    with pytest.raises(SdmError, match=message):
        SamplingSettings(**{"num_samples": 2, "steps": 2, field: value})

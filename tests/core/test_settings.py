"""Validation before work: comma lists, ranges, and an output folder proven writable without a trace."""

import os

import pytest

from sdm.core.errors import SdmError
from sdm.core.settings import SamplingSettings, parse_list, probe_writable


def test_comma_lists_parse_or_fail_in_one_line():
    assert parse_list("4, 8,,16", "--timesteps") == [4, 8, 16]
    assert parse_list("0.9,1.1", "--scales", float) == [0.9, 1.1]
    with pytest.raises(SdmError, match=r"^--timesteps must be comma-separated integers, got '4,abc'$"):
        parse_list("4,abc", "--timesteps")


def test_probe_proves_a_missing_folder_can_be_made_and_leaves_nothing(tmp_path):
    probe_writable(tmp_path / "a" / "b" / "out")
    assert list(tmp_path.iterdir()) == []


def test_probe_refuses_a_parent_that_is_a_file_or_read_only(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SdmError, match="is not a folder"):
        probe_writable(tmp_path / "file" / "out")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SdmError, match="cannot write"):
            probe_writable(locked / "out")
    with pytest.raises(SdmError, match="cannot write"):
        probe_writable("/proc/x/out")


@pytest.mark.parametrize("field, value, message", [
    ("num_samples", 0, "--num-samples must be >= 1"), ("steps", 0, "--steps must be >= 1"),
    ("batch_size", 0, "--batch-size must be >= 1"), ("sampler", "euler", "--sampler must be one of"),
])
def test_sampling_settings_refuse_out_of_range_values(field, value, message):
    with pytest.raises(SdmError, match=message):
        SamplingSettings(**{"num_samples": 2, "steps": 2, field: value})

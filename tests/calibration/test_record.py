"""The calibration record: a lossless round trip, and refusals of another model's or a corrupt record."""

import pytest
import torch
from sdm.calibration.record import CalibrationRecord
from sdm.calibration.settings import CalibrationError


def test_record_round_trip_and_source_guard(tmp_path, tiny_record):
    tiny_record.save(tmp_path)
    again = CalibrationRecord.load(tmp_path)
    assert set(again.sites) == set(tiny_record.sites)
    name = next(iter(tiny_record.sites))
    assert torch.equal(again.sites[name].z_quantiles, tiny_record.sites[name].z_quantiles)
    assert torch.equal(again.inputs, tiny_record.inputs)
    again.check_source(tiny_record.meta["source_fingerprint"])
    with pytest.raises(CalibrationError, match="from another model"):
        again.check_source("0000")


def test_corrupt_or_missing_record_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="no calibration record"):
        CalibrationRecord.load(tmp_path)
    (tmp_path / "calibration.json").write_text("{not json")
    (tmp_path / "calibration.safetensors").write_bytes(b"junk")
    with pytest.raises(CalibrationError, match="corrupt calibration record"):
        CalibrationRecord.load(tmp_path)


def test_every_site_statistic_and_the_metadata_survive_the_round_trip(tmp_path, tiny_record):
    tiny_record.save(tmp_path)
    again = CalibrationRecord.load(tmp_path)
    for name, stats in tiny_record.sites.items():
        loaded = again.sites[name]
        assert loaded.activation == stats.activation and loaded.channels == stats.channels
        for field in ("z_quantiles", "group_mean", "group_var"):
            assert torch.equal(getattr(loaded, field), getattr(stats, field)), (name, field)
    assert again.meta == tiny_record.meta and torch.equal(again.input_timesteps, tiny_record.input_timesteps)

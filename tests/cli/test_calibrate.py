"""`sdm-calibrate` writes a record that `sdm-convert --record` and `eval/sweep.py --record` reuse."""

import json

import pytest
from sdm.calibration.record import CalibrationRecord
from sdm.cli.calibrate import main
from sdm.cli.convert import main as convert_main
from sdm.cli.sweep import main as sweep_main

from tests.conftest import make_tiny_unet


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    make_tiny_unet().save_pretrained(root / "ann")
    assert main(["--checkpoint", str(root / "ann"), "--out", str(root / "record"), "--calib-samples", "2",
                 "--calib-steps", "2"]) == 0
    return root


def test_the_record_is_reused_by_convert_and_sweep_without_recalibrating(calibrated, tmp_path):
    assert {p.name for p in (calibrated / "record").iterdir()} == {"calibration.json", "calibration.safetensors"}
    record = CalibrationRecord.load(calibrated / "record")
    assert record.meta["num_samples"] == 2 and len(record.meta["diffusion_timesteps"]) == 2
    out = tmp_path / "snn"
    assert convert_main(["--checkpoint", str(calibrated / "ann"), "--record", str(calibrated / "record"),
                         "-T", "2", "--eval-samples", "0", "--out", str(out)]) == 0
    assert (out / "calibration.json").read_text() == (calibrated / "record" / "calibration.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"]["timesteps"] == 2
    assert sweep_main(["--ann", str(calibrated / "ann"), "--record", str(calibrated / "record"), "--timesteps", "2",
                       "--num-samples", "1", "--steps", "1", "--out", str(tmp_path / "sweep")]) == 0

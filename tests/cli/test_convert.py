"""`sdm-convert` end to end on a tiny model; its refusals are rows of tests/test_bad_input.py, here only
what the table cannot show (that options are checked before the model loads)."""

import json
import subprocess
import sys

import pytest
from sdm.cli.convert import main

from tests.conftest import make_tiny_unet, refused_by

FAST = ["--calib-samples", "2", "--calib-steps", "2", "--eval-samples", "2", "--eval-steps", "2"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "unet"
    make_tiny_unet().save_pretrained(folder)
    return folder


def refused(capsys, argv, tmp_path, expected: str) -> None:
    refused_by(main, "sdm-convert", capsys, argv, tmp_path, expected)


def test_converts_writes_folder_and_summary(tmp_path, tiny_folder, capsys):
    out = tmp_path / "snn"
    assert main(["--checkpoint", str(tiny_folder), "--timesteps", "2", "--out", str(out), *FAST]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "calibration.json", "calibration.safetensors",
            "operations.json", "summary.json", "grid.png"} <= names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"]["timesteps"] == 2
    assert summary["fidelity"]["num_samples"] == 2 and summary["fidelity"]["psnr_db"] > 0
    assert "PSNR SNN vs ANN" in capsys.readouterr().out


def test_reuses_a_saved_record(tmp_path, tiny_folder, capsys):
    first = tmp_path / "first"
    assert main(["--checkpoint", str(tiny_folder), "--out", str(first), *FAST, "--eval-samples", "0"]) == 0
    second = tmp_path / "second"
    assert main(["--checkpoint", str(tiny_folder), "--record", str(first), "--timesteps", "3",
                 "--out", str(second), "--eval-samples", "0"]) == 0
    assert (second / "calibration.json").read_text() == (first / "calibration.json").read_text()


def test_spiking_level_is_saved_and_an_older_record_is_refused(tmp_path, tiny_folder, capsys):
    first = tmp_path / "first"
    assert main(["--checkpoint", str(tiny_folder), "--out", str(first), *FAST, "--eval-samples", "0",
                 "--spiking", "full"]) == 0
    assert json.loads((first / "config.json").read_text())["policy"]["spiking"] == "full"
    meta = json.loads((first / "calibration.json").read_text())
    meta["sites"] = {name: act for name, act in meta["sites"].items() if act != "identity"}  # as recorded before
    (first / "calibration.json").write_text(json.dumps(meta))
    capsys.readouterr()
    out = tmp_path / "second"
    assert main(["--checkpoint", str(tiny_folder), "--record", str(first), "--spiking", "residual",
                 "--eval-samples", "0", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("sdm-convert: error:") and "re-run calibration" in errors[0]
    assert not out.exists()



def test_console_script_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sdm.cli.convert", "--checkpoint", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_calibrates_from_real_images_when_given_data(tmp_path, tiny_folder, capsys):
    import zipfile

    import numpy as np
    from PIL import Image

    archive = tmp_path / "images.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            path = tmp_path / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)
            zf.write(path, f"set/train/{i}.png")
    out = tmp_path / "snn"
    assert main(["--checkpoint", str(tiny_folder), "--calib-data", str(archive), "--calib-split", "train",
                 "--calib-samples", "3", "--calib-steps", "2", "--eval-samples", "0", "--out", str(out)]) == 0
    meta = json.loads((out / "calibration.json").read_text())
    assert meta["inputs"].startswith("data:") and len(meta["diffusion_timesteps"]) == 2


@pytest.mark.parametrize("argv, expected", [
    (["--eval-samples", "1", "--eval-steps", "0"], "--eval-steps must be >= 1"),
    (["--eval-samples", "-1"], "--eval-samples must be >= 0"),
    (["--calib-samples", "0"], "--calib-samples must be >= 1"),
    (["--calib-batch-size", "0"], "--calib-batch-size must be >= 1"),
])
def test_options_are_validated_before_the_model_loads(tmp_path, capsys, argv, expected):
    """The checkpoint does not even exist: a refusal naming the option proves nothing was loaded first."""
    refused(capsys, ["--checkpoint", str(tmp_path / "missing"), *argv], tmp_path, expected)


def test_an_unwritable_out_is_refused_before_the_model_loads(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing"), "--out", "/proc/x/out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdm-convert: error: cannot write /proc/x/out") and "\n" not in err

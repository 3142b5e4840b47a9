"""`sdm-convert` end to end on a tiny model, and every bad input it must refuse in one line."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DModel

from sdm.cli.convert import main
from tests.conftest import TINY_UNET_CONFIG, make_tiny_unet, refused_by

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


def test_existing_output_needs_overwrite(tmp_path, tiny_folder, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["--checkpoint", str(tiny_folder), "--out", str(out), *FAST]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").exists()


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


def test_missing_checkpoint(tmp_path, capsys):
    refused(capsys, ["--checkpoint", str(tmp_path / "nope")], tmp_path, "checkpoint not found")


def test_unknown_format(tmp_path, capsys):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    refused(capsys, ["--checkpoint", str(path)], tmp_path, "unknown checkpoint format")


def test_corrupt_safetensors(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "model.json").write_text(json.dumps(TINY_UNET_CONFIG))
    refused(capsys, ["--checkpoint", str(tmp_path / "model.safetensors")], tmp_path, "corrupt safetensors")


def test_corrupt_own_layout_pickle(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"not a zip archive at all")
    refused(capsys, ["--checkpoint", str(tmp_path / "ckpt.pt")], tmp_path, "ckpt.pt")


def test_weights_that_fit_no_architecture(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(TINY_UNET_CONFIG))
    refused(capsys, ["--checkpoint", str(tmp_path / "model.safetensors")], tmp_path, "do not fit the config")


def test_unsupported_module_is_named_with_its_path(tmp_path, capsys):
    folder = tmp_path / "skip"
    UNet2DModel(**{**TINY_UNET_CONFIG, "down_block_types": ("SkipDownBlock2D", "AttnDownBlock2D"),
                   "up_block_types": ("AttnUpBlock2D", "SkipUpBlock2D")}).save_pretrained(folder)
    refused(capsys, ["--checkpoint", str(folder), *FAST], tmp_path, "unsupported module SkipDownBlock2D at down_blocks.0")


@pytest.mark.parametrize("argv, expected", [
    (["--timesteps", "0"], "timesteps must be an integer >= 1"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--device", "banana"], "unknown device"),
    (["--threshold-scale", "0"], "threshold scale must be > 0"),
    (["--percentile", "120"], "percentile must be in (0, 100]"),
    (["--spiking", "everything"], "spiking must be one of hybrid, residual, full"),
])
def test_bad_options(tmp_path, tiny_folder, capsys, argv, expected):
    refused(capsys, ["--checkpoint", str(tiny_folder), *argv], tmp_path, expected)


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


def test_calibration_data_without_images_is_refused(tmp_path, tiny_folder, capsys):
    (tmp_path / "empty").mkdir()
    refused(capsys, ["--checkpoint", str(tiny_folder), "--calib-data", str(tmp_path / "empty")], tmp_path, "no images")


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

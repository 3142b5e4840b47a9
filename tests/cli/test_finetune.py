"""`sdm-finetune` end to end on the tiny model (T = 2, a few steps): training, resume, refusals."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sdm.calibration.collect import calibrate_data_free
from sdm.cli import finetune as finetune_cli
from sdm.converter.convert import convert
from sdm.converter.finetune import run as finetune
from sdm.converter.folder import load_converted, save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import has_tsm, tsm_values
from sdm.core.atomic import atomic_folder

from tests.conftest import TINY_CALIBRATION, assert_refused, make_tiny_source, save_ann_and_snn

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_source, tiny_record):
    """The tiny ANN as a diffusers folder, its T=2 SNN, and a folder of small images."""
    root = save_ann_and_snn(tmp_path_factory.mktemp("tsm"), tiny_source, tiny_record, timesteps=2)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return root


def tune(folders, out, *extra):
    return finetune_cli.main(["--snn", str(folders / "snn"), "--ann", str(folders / "ann"), "--out", str(out),
                          "--batch-size", "4", "--lr", "0.02", *extra])


def refused(capsys, code, expected):
    assert_refused(capsys, code, "sdm-finetune", expected)


def weights(folder):
    return load_file(str(folder / WEIGHTS))


def test_finetune_lowers_the_distillation_loss_and_writes_a_converted_folder(folders, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert tune(folders, out, "--steps", "8", "--checkpoint-every", "0") == 0
    assert "loss" in capsys.readouterr().out
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["loss_after"]["distill"] < summary["loss_before"]["distill"], summary
    assert summary["steps"] == 8 and summary["seconds_per_step"] > 0 and summary["recipe"]["train"] == "p"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", WEIGHTS, "calibration.json", "calibration.safetensors", "operations.json", "tsm.json",
            "tsm.png", "loss_log.csv", "finetune.json", "checkpoint.pt"} <= names
    tuned = load_converted(out)
    assert has_tsm(tuned) and tuned.config.provenance["finetune"]["steps"] == 8
    assert json.loads((out / "tsm.json").read_text())["sites"] == tsm_values(tuned)
    assert any(v != [1.0, 1.0] for v in tsm_values(tuned).values())
    rows = list(csv.DictReader((out / "loss_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    plain, again = weights(folders / "snn"), weights(out)
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # --train p: only p changed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupt_and_resume_equals_an_uninterrupted_run(folders, tmp_path, monkeypatch):
    options = ["--steps", "4", "--checkpoint-every", "2", "--train", "thresholds", "--ema", "0.5",
               "--data", str(folders / "images"), "--data-weight", "0.5"]
    assert tune(folders, tmp_path / "straight", *options) == 0

    original, calls = finetune.Trainer.train_step, []

    def interrupted(self):
        calls.append(self.step)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(finetune.Trainer, "train_step", interrupted)
    assert tune(folders, tmp_path / "resumed", *options) == 130
    assert {p.name for p in (tmp_path / "resumed").iterdir()} == {"checkpoint.pt", "loss_log.csv"}
    monkeypatch.setattr(finetune.Trainer, "train_step", original)
    assert tune(folders, tmp_path / "resumed", *options, "--resume") == 0

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert set(straight) == set(resumed) and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (tmp_path / "straight" / "loss_log.csv").read_text() == (tmp_path / "resumed" / "loss_log.csv").read_text()
    summary = json.loads((tmp_path / "resumed" / "finetune.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["loss_after"]["data"] > 0


def test_bf16_autocast_runs(folders, tmp_path):
    assert tune(folders, tmp_path / "bf16", "--steps", "1", "--bf16", "--pool", "trajectories",
                "--trajectories", "2", "--trajectory-steps", "2") == 0
    assert json.loads((tmp_path / "bf16" / "finetune.json").read_text())["distillation_inputs"] == 4


@pytest.fixture(scope="module")
def finished(folders, tmp_path_factory):
    """A finished 2-step run (its folder holds the final checkpoint.pt)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert tune(folders, out, "--steps", "2") == 0
    return out


def copy_run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_refuses_resume_from_another_model(finished, tmp_path, capsys):
    source = make_tiny_source(seed=1)
    record = calibrate_data_free(source.unet, source.scheduler_config, TINY_CALIBRATION, source.describe()["fingerprint"])
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(convert(source, record, ConversionPolicy(timesteps=2)), record, staging)
    source.unet.save_pretrained(tmp_path / "ann")
    out = copy_run(finished, tmp_path)
    code = finetune_cli.main(["--snn", str(tmp_path / "snn"), "--ann", str(tmp_path / "ann"), "--out", str(out),
                          "--batch-size", "4", "--lr", "0.02", "--steps", "4", "--resume"])
    refused(capsys, code, "is from another model")


def test_refuses_resume_at_another_T(folders, finished, tiny_source, tiny_record, tmp_path, capsys):
    with atomic_folder(tmp_path / "snn3") as staging:
        save_converted(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3)), tiny_record, staging)
    out = copy_run(finished, tmp_path)
    code = finetune_cli.main(["--snn", str(tmp_path / "snn3"), "--ann", str(folders / "ann"), "--out", str(out),
                          "--batch-size", "4", "--lr", "0.02", "--steps", "4", "--resume"])
    refused(capsys, code, "trained at T=2, this SNN has T=3")


def test_refuses_bad_resumes(folders, finished, tmp_path, capsys):
    refused(capsys, tune(folders, tmp_path / "none", "--steps", "4", "--resume"), "nothing to resume")
    out = copy_run(finished, tmp_path)
    refused(capsys, tune(folders, out, "--steps", "4"), "pass --resume")
    refused(capsys, tune(folders, out, "--steps", "4", "--resume", "--train", "all"), "--train p")
    refused(capsys, tune(folders, out, "--steps", "1", "--resume"), "beyond --steps 1")
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    refused(capsys, tune(folders, out, "--steps", "4", "--resume"), "corrupt checkpoint")

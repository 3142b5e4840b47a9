"""TSM factors, trainable sets, and `sdm-finetune` end to end on the tiny model (T = 2, a few steps)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdm.calibration.collect import calibrate_data_free
from sdm.converter import finetune
from sdm.converter.convert import convert
from sdm.core.atomic import atomic_folder
from sdm.converter.export import load_converted, save_converted
from sdm.converter.policy import ConversionPolicy
from sdm.converter.tsm import TsmError, enable_tsm, freeze, has_tsm, set_trainable, tsm_values
from tests.conftest import TINY_CALIBRATION, make_tiny_source

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_source, tiny_record):
    """The tiny ANN as a diffusers folder, its T=2 SNN, and a folder of small images."""
    root = tmp_path_factory.mktemp("tsm")
    tiny_source.unet.save_pretrained(root / "ann")
    with atomic_folder(root / "snn") as staging:
        save_converted(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2)), tiny_record, staging)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return root


def tune(folders, out, *extra):
    return finetune.main(["--snn", str(folders / "snn"), "--ann", str(folders / "ann"), "--out", str(out),
                          "--batch-size", "4", "--lr", "0.02", *extra])


def refused(capsys, code, expected):
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line]
    assert len(err) == 1 and err[0].startswith("sdm-finetune: error:"), err
    assert expected in err[0], err[0]


def weights(folder):
    return load_file(str(folder / WEIGHTS))


# ----------------------------------------------------------------------------- library


def test_p_one_reproduces_the_plain_snn_exactly(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    x, t = tiny_record.inputs[:4], tiny_record.input_timesteps[:4]
    with torch.no_grad():
        plain = snn(x, t).sample
        enable_tsm(snn)
        assert has_tsm(snn) and snn.config.tsm
        assert torch.equal(snn(x, t).sample, plain)
        keys = set(snn.state_dict())
        set_trainable(snn, "all")
        assert set(snn.state_dict()) == keys  # trainable thresholds keep their state-dict names
        assert torch.equal(snn(x, t).sample, plain)
    assert all(v == [1.0, 1.0] for v in tsm_values(snn).values()) and len(tsm_values(snn)) == len(snn.sites())
    with torch.enable_grad():  # the surrogate-gradient path computes the same forward values
        torch.testing.assert_close(snn(x, t).sample, plain, rtol=1e-5, atol=1e-6)


def test_trainable_sets(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    sites = len(snn.sites())
    assert {n.rsplit(".", 1)[1] for n, _ in set_trainable(snn, "p")} == {"tsm"}
    named = set_trainable(snn, "thresholds")
    assert len(named) == 3 * sites and {n.rsplit(".", 1)[1] for n, _ in named} == {"tsm", "threshold_pos", "threshold_neg"}
    named = set_trainable(snn, "all")
    assert len(named) == len(list(snn.parameters())) and sum(n.endswith(".output_shift") for n, _ in named) == sites
    freeze(snn)
    assert not any(p.requires_grad for p in snn.parameters())
    assert all(isinstance(site.neuron.threshold_pos, torch.Tensor) and "threshold_pos" in site.neuron._buffers
               for site in snn.sites().values())
    with pytest.raises(TsmError, match="unknown trainable set"):
        set_trainable(snn, "weights")


def test_tsm_model_round_trips_bit_identically(tmp_path, tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    set_trainable(snn, "thresholds")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for _, p in set_trainable(snn, "thresholds"):
            p.mul_(1 + 0.1 * torch.rand(p.shape, generator=generator))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, tiny_record, staging)  # saved while thresholds are still Parameters
    again = load_converted(tmp_path / "snn")
    assert json.loads((tmp_path / "snn" / "config.json").read_text())["tsm"] is True
    before, after = snn.state_dict(), again.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert tsm_values(again) == tsm_values(snn)
    x, t = tiny_record.inputs[:2], tiny_record.input_timesteps[:2]
    with torch.no_grad():
        assert torch.equal(snn(x, t).sample, again(x, t).sample)
    plain = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    assert not has_tsm(plain) and not any(k.endswith(".tsm") for k in plain.state_dict())


# ----------------------------------------------------------------------------- sdm-finetune


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


def test_refuses_a_folder_that_is_not_a_converted_snn(folders, tmp_path, capsys):
    code = finetune.main(["--snn", str(folders / "ann"), "--ann", str(folders / "ann"), "--out", str(tmp_path / "o")])
    refused(capsys, code, "not a converted model folder")
    code = finetune.main(["--snn", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    refused(capsys, code, "converted model folder not found")
    assert not (tmp_path / "o").exists()


def test_refuses_a_dataset_without_images(folders, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    refused(capsys, tune(folders, tmp_path / "o", "--data", str(tmp_path / "empty"), "--data-weight", "1"), "no images")
    refused(capsys, tune(folders, tmp_path / "o", "--data-weight", "1"), "needs --data")


def test_refuses_an_ann_that_is_not_the_source(folders, tmp_path, capsys):
    other = tmp_path / "other"
    make_tiny_source(seed=1).unet.save_pretrained(other)
    code = finetune.main(["--snn", str(folders / "snn"), "--ann", str(other), "--out", str(tmp_path / "o")])
    refused(capsys, code, "converted from another model")


def test_refuses_resume_from_another_model(finished, tmp_path, capsys):
    source = make_tiny_source(seed=1)
    record = calibrate_data_free(source.unet, source.scheduler_config, TINY_CALIBRATION, source.describe()["fingerprint"])
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(convert(source, record, ConversionPolicy(timesteps=2)), record, staging)
    source.unet.save_pretrained(tmp_path / "ann")
    out = copy_run(finished, tmp_path)
    code = finetune.main(["--snn", str(tmp_path / "snn"), "--ann", str(tmp_path / "ann"), "--out", str(out),
                          "--batch-size", "4", "--lr", "0.02", "--steps", "4", "--resume"])
    refused(capsys, code, "is from another model")


def test_refuses_resume_at_another_T(folders, finished, tiny_source, tiny_record, tmp_path, capsys):
    with atomic_folder(tmp_path / "snn3") as staging:
        save_converted(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3)), tiny_record, staging)
    out = copy_run(finished, tmp_path)
    code = finetune.main(["--snn", str(tmp_path / "snn3"), "--ann", str(folders / "ann"), "--out", str(out),
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


def test_refuses_bad_options(folders, tmp_path, capsys):
    refused(capsys, tune(folders, tmp_path / "o", "--steps", "0"), "--steps must be >= 1")
    refused(capsys, tune(folders, tmp_path / "o", "--distill-weight", "0"), "nothing to train on")
    refused(capsys, tune(folders, tmp_path / "o", "--ema", "1.5"), "--ema")
    refused(capsys, tune(folders, folders / "snn"), "--out must differ")

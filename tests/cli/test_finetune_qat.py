"""`sdm-finetune --method qat` end to end on the tiny model (T = 4, a few steps): the held-out
loss falls, the folder's steps equal its twin and take TSM on top, resume equals an
uninterrupted run, refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file
from sdm.cli import finetune as finetune_cli
from sdm.cli.export import main as export_main
from sdm.converter.convert import convert
from sdm.converter.finetune import run as finetune
from sdm.converter.folder import load_converted, save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import has_tsm
from sdm.core.atomic import atomic_folder

from tests.conftest import make_tiny_source, steps_and_twin

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_source, tiny_record):
    """The tiny ANN as a diffusers folder and T = 4 conversions with exact and with single-spike neurons."""
    root = tmp_path_factory.mktemp("qat")
    tiny_source.unet.save_pretrained(root / "ann")
    for name, policy in [("snn", ConversionPolicy(timesteps=4)), ("single", ConversionPolicy(timesteps=4, neuron="single-spike"))]:
        with atomic_folder(root / name) as staging:
            save_converted(convert(tiny_source, tiny_record, policy), tiny_record, staging)
    return root


def tune(folders, out, *extra, snn="snn"):
    return finetune_cli.main(["--snn", str(folders / snn), "--ann", str(folders / "ann"), "--out", str(out), "--method", "qat",
                          "--batch-size", "8", "--lr", "0.002", "--trajectories", "8", "--trajectory-steps", "4", *extra])


def refused(capsys, code, expected):
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line]
    assert len(err) == 1 and err[0].startswith("sdm-finetune: error:"), err
    assert expected in err[0], err[0]


@pytest.fixture(scope="module")
def tuned(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "qat"
    assert tune(folders, out, "--steps", "12", "--refresh-every", "6", "--checkpoint-every", "0") == 0
    return out


def test_qat_lowers_the_held_out_loss_and_writes_a_plain_converted_folder(folders, tuned):
    summary = json.loads((tuned / "finetune.json").read_text())
    assert summary["loss_after"]["distill_weighted"] < summary["loss_before"]["distill_weighted"], summary
    assert summary["loss_after"]["loss"] == summary["loss_after"]["distill_weighted"]
    assert summary["recipe"]["method"] == "qat" and summary["recipe"]["pool"] == "trajectories"
    assert summary["seconds_per_step"] > 0 and "held-out" in summary["loss_note"]
    assert set(summary["threshold_change"]) >= {"down.norm1", "up.norm1", "out.conv_norm_out"}
    sensitivity = summary["step_sensitivity"]  # qat's default: inputs drawn by their step's measured gain
    assert summary["recipe"]["step_weighting"] == "sensitivity" and len(sensitivity["gains"]) == 4
    assert sensitivity["timesteps"] == sorted(sensitivity["timesteps"], reverse=True)
    assert all(g >= 0 for g in sensitivity["gains"]) and max(sensitivity["gains"]) > 0
    assert "distill_weighted" in summary["loss_before"] and "distill_weighted" in summary["loss_after"]
    assert not (tuned / "tsm.json").exists()
    model = load_converted(tuned)
    assert not has_tsm(model) and model.config.provenance["finetune"]["method"] == "qat"
    before, after = load_file(str(folders / "snn" / WEIGHTS)), load_file(str(tuned / WEIGHTS))
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("threshold_pos", "threshold_neg", "output_shift")) for k in changed)  # --weights none


def test_uniform_step_weighting_measures_no_sensitivity(folders, tmp_path):
    assert tune(folders, tmp_path / "u", "--steps", "2", "--checkpoint-every", "0", "--step-weighting", "uniform") == 0
    summary = json.loads((tmp_path / "u" / "finetune.json").read_text())
    assert "step_sensitivity" not in summary and "distill_weighted" not in summary["loss_after"]


def test_sample_target_lowers_the_held_out_sample_loss_and_steps_equal_the_twin(folders, tmp_path):
    out = tmp_path / "sample"
    assert tune(folders, out, "--distill-target", "sample", "--steps", "6", "--batch-size", "2",
                "--eval-size", "4", "--checkpoint-every", "0") == 0
    summary = json.loads((out / "finetune.json").read_text())
    before, after = summary["loss_before"], summary["loss_after"]
    assert after["distill_sample"] < before["distill_sample"], summary
    assert after["loss"] == after["distill_sample"] and "distill" in after  # the eps loss is still reported
    assert summary["recipe"]["distill_target"] == "sample" and summary["recipe"]["pool"] == "noises"
    assert summary["distillation_inputs"] == 12 and "step_sensitivity" not in summary
    assert "distill_sample" in summary["loss_note"] and after["sample_psnr_db"] > before["sample_psnr_db"]
    steps, twin = steps_and_twin(load_converted(out))
    torch.testing.assert_close(steps, twin, rtol=0, atol=1e-9)


def test_qat_folder_steps_equal_its_twin_and_take_tsm_and_onnx_on_top(folders, tuned, tmp_path):
    steps, twin = steps_and_twin(load_converted(tuned))
    torch.testing.assert_close(steps, twin, rtol=0, atol=1e-9)
    out = tmp_path / "snn.onnx"
    assert export_main(["onnx", "--snn", str(tuned), "--out", str(out), "--ann", str(folders / "ann")]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["snn"]["max_relative_difference"] < 1e-4
    code = finetune_cli.main(["--snn", str(tuned), "--ann", str(folders / "ann"), "--out", str(tmp_path / "tsm"),
                          "--steps", "1", "--batch-size", "2"])
    assert code == 0 and has_tsm(load_converted(tmp_path / "tsm"))


@pytest.mark.parametrize("target", [["--refresh-every", "3"], ["--distill-target", "sample", "--batch-size", "2",
                                                                   "--eval-size", "2", "--sample-loss", "psnr"]],
                         ids=["eps", "sample"])
def test_qat_resume_equals_an_uninterrupted_run(folders, tmp_path, monkeypatch, target):
    options = ["--steps", "6", "--checkpoint-every", "2", *target, "--weights", "lora", "--rank", "2", "--ema", "0.5"]
    assert tune(folders, tmp_path / "straight", *options) == 0
    original, calls = finetune.Trainer.train_step, []

    def interrupted(self):
        calls.append(self.step)
        if len(calls) == 5:  # after the checkpoint at step 4, past the refresh at step 3
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(finetune.Trainer, "train_step", interrupted)
    assert tune(folders, tmp_path / "resumed", *options) == 130
    monkeypatch.setattr(finetune.Trainer, "train_step", original)
    assert tune(folders, tmp_path / "resumed", *options, "--resume") == 0
    straight, resumed = load_file(str(tmp_path / "straight" / WEIGHTS)), load_file(str(tmp_path / "resumed" / WEIGHTS))
    assert set(straight) == set(resumed) and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (tmp_path / "straight" / "loss_log.csv").read_text() == (tmp_path / "resumed" / "loss_log.csv").read_text()
    assert json.loads((tmp_path / "resumed" / "finetune.json").read_text())["resumed_from_step"] == 4


def test_qat_refusals(folders, tuned, tmp_path, capsys):
    refused(capsys, tune(folders, tmp_path / "o", snn="single"), "single-spike neurons")
    tsm = tmp_path / "tsm"
    assert finetune_cli.main(["--snn", str(folders / "snn"), "--ann", str(folders / "ann"), "--out", str(tsm),
                          "--steps", "1", "--batch-size", "2"]) == 0
    capsys.readouterr()
    refused(capsys, finetune_cli.main(["--snn", str(tsm), "--ann", str(folders / "ann"), "--out", str(tmp_path / "o"),
                                   "--method", "qat"]), "TSM model")
    other = tmp_path / "other"
    make_tiny_source(seed=1).unet.save_pretrained(other)
    refused(capsys, finetune_cli.main(["--snn", str(folders / "snn"), "--ann", str(other), "--out", str(tmp_path / "o"),
                                   "--method", "qat"]), "converted from another model")
    refused(capsys, tune(folders, tmp_path / "o", "--train", "all"), "--train is for --method tsm")
    refused(capsys, finetune_cli.main(["--snn", str(folders / "snn"), "--out", str(tmp_path / "o"), "--weights", "all"]),
            "--weights is for --method qat")
    refused(capsys, tune(folders, tmp_path / "o", "--pool", "record", "--refresh-every", "5"), "needs --pool trajectories")
    assert not (tmp_path / "o").exists()

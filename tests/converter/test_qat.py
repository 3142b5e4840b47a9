"""QAT through the quantised twin (converter/qat.py) on the tiny model: what is trainable, that
training changes the SNN the steps simulate, adapters merge exactly, and the refusals."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sdm.converter import finetune, qat
from sdm.converter.convert import convert
from sdm.converter.export import load_converted, save_converted
from sdm.converter.policy import ConversionPolicy
from sdm.converter.tsm import clamp_thresholds_, enable_tsm, has_tsm, make_parameters
from sdm.core.atomic import atomic_folder
from tests.conftest import make_tiny_source

WEIGHTS = "diffusion_pytorch_model.safetensors"

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
TIMES = torch.tensor([900, 600, 300, 20])


def steps_and_twin(snn, x=X, t=TIMES):
    """The step simulation and the closed form of the same model, in float64 (ties far below any threshold)."""
    snn = snn.double()
    with torch.no_grad():
        snn.set_simulation("steps")
        steps = snn(x.double(), t).sample
        snn.set_simulation("closed-form")
        twin = snn(x.double(), t).sample
        snn.set_simulation("steps")
    snn.float()
    return steps, twin


def train(snn, source, weights, steps=12, lr=0.02):
    named = qat.prepare(snn, weights, rank=2)
    optimizer = torch.optim.Adam([p for _, p in named], lr=lr)
    with torch.no_grad():
        target = source.unet(X, TIMES).sample
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(snn(X, TIMES).sample, target).backward()
        optimizer.step()
        clamp_thresholds_(snn)
    return named


def test_prepare_trains_the_twin_with_lsq_scaled_threshold_gradients(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    keys = set(snn.state_dict())
    with torch.no_grad():
        before = snn(X, TIMES).sample
    named = qat.prepare(snn, "none")
    sites = snn.sites()
    assert snn.simulation == "closed-form" and set(snn.state_dict()) == keys
    assert {n.rsplit(".", 1)[1] for n, _ in named} == {"threshold_pos", "threshold_neg", "output_shift"}
    assert len(named) == 3 * len(sites)
    with torch.no_grad():
        torch.testing.assert_close(snn(X, TIMES).sample, before, rtol=1e-4, atol=1e-5)  # the twin computes the SNN
    snn(X, TIMES).sample.square().sum().backward()
    scaled = next(iter(sites.values()))
    assert qat.activations_per_threshold(snn)[scaled.site] == 64  # the first site sees 8 x 8 inputs
    plain = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))  # the same twin, unscaled
    plain.set_simulation("closed-form")
    make_parameters(plain, shifts=True)
    plain(X, TIMES).sample.square().sum().backward()
    unscaled = next(iter(plain.sites().values()))
    assert unscaled.neuron.threshold_pos.grad.abs().sum() > 0
    # LSQ's scale g = 1 / sqrt(N * T), N = H * W per channel threshold
    torch.testing.assert_close(scaled.neuron.threshold_pos.grad, unscaled.neuron.threshold_pos.grad / (64 * 4) ** 0.5)


@pytest.mark.parametrize("weights", ["none", "lora", "all"])
def test_trained_model_is_a_plain_snn_whose_steps_equal_its_twin(tiny_source, tiny_record, weights):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    keys, original = set(snn.state_dict()), {k: v.clone() for k, v in snn.state_dict().items()}
    thresholds = qat.thresholds_of(snn)
    train(snn, tiny_source, weights)
    with torch.no_grad():
        trained = snn(X, TIMES).sample  # closed form, adapters still separate
    qat.finish(snn)
    assert snn.simulation == "steps" and set(snn.state_dict()) == keys
    assert not any(p.requires_grad for p in snn.parameters())
    state = snn.state_dict()
    changed = {k for k in keys if not torch.equal(state[k], original[k])}
    assert any(k.endswith("threshold_pos") for k in changed) and any(k.endswith("output_shift") for k in changed)
    assert any(k.endswith("conv1.weight") for k in changed) == (weights != "none")
    assert all(float(site.neuron.threshold_neg.min()) > 0 and float(site.neuron.threshold_pos.min()) > 0
               for site in snn.sites().values())
    steps, twin = steps_and_twin(snn)
    torch.testing.assert_close(steps, twin, rtol=0, atol=1e-9)
    with torch.no_grad():
        snn.set_simulation("closed-form")
        torch.testing.assert_close(snn(X, TIMES).sample, trained, rtol=1e-4, atol=1e-5)  # merged adapters: same model
    changes = qat.threshold_changes(thresholds, snn)
    assert set(changes) >= {"down.norm1", "up.norm2", "out.conv_norm_out"}


def test_thresholds_stay_positive_under_a_push_to_zero(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    named = qat.prepare(snn, "none")
    optimizer = torch.optim.SGD([p for n, p in named if "threshold" in n], lr=1e6)
    for _ in range(2):
        optimizer.zero_grad()
        sum(p.sum() for n, p in named if "threshold" in n).backward()
        optimizer.step()
        clamp_thresholds_(snn)
    values = torch.cat([p.detach() for n, p in named if "threshold" in n])
    assert float(values.min()) > 0


def test_models_without_an_equal_twin_are_refused(tiny_source, tiny_record):
    cases = [
        (ConversionPolicy(timesteps=4, neuron="single-spike"), "single-spike"),
        (ConversionPolicy(timesteps=4, max_payload=1), "max-payload"),
        (ConversionPolicy(timesteps=4, attention="instant"), "per-step attention"),
    ]
    for policy, message in cases:
        with pytest.raises(qat.QatError, match=message):
            qat.prepare(convert(tiny_source, tiny_record, policy))
    tsm = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    enable_tsm(tsm)
    with pytest.raises(qat.QatError, match="TSM model"):
        qat.prepare(tsm)
    with pytest.raises(qat.QatError, match="unknown QAT weight set"):
        qat.prepare(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2)), "some")


# ----------------------------------------------------------------------------- sdm-finetune --method qat


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
    return finetune.main(["--snn", str(folders / snn), "--ann", str(folders / "ann"), "--out", str(out), "--method", "qat",
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
    assert summary["loss_after"]["distill"] < summary["loss_before"]["distill"], summary
    assert summary["recipe"]["method"] == "qat" and summary["recipe"]["pool"] == "trajectories"
    assert summary["seconds_per_step"] > 0 and "held-out" in summary["loss_note"]
    assert set(summary["threshold_change"]) >= {"down.norm1", "up.norm1", "out.conv_norm_out"}
    assert not (tuned / "tsm.json").exists()
    model = load_converted(tuned)
    assert not has_tsm(model) and model.config.provenance["finetune"]["method"] == "qat"
    before, after = load_file(str(folders / "snn" / WEIGHTS)), load_file(str(tuned / WEIGHTS))
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("threshold_pos", "threshold_neg", "output_shift")) for k in changed)  # --weights none


def test_qat_folder_steps_equal_its_twin_and_take_tsm_on_top(folders, tuned, tmp_path):
    steps, twin = steps_and_twin(load_converted(tuned))
    torch.testing.assert_close(steps, twin, rtol=0, atol=1e-9)
    code = finetune.main(["--snn", str(tuned), "--ann", str(folders / "ann"), "--out", str(tmp_path / "tsm"),
                          "--steps", "1", "--batch-size", "2"])
    assert code == 0 and has_tsm(load_converted(tmp_path / "tsm"))


def test_qat_resume_equals_an_uninterrupted_run(folders, tmp_path, monkeypatch):
    options = ["--steps", "6", "--checkpoint-every", "2", "--refresh-every", "3", "--weights", "lora", "--rank", "2",
               "--ema", "0.5"]
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
    assert finetune.main(["--snn", str(folders / "snn"), "--ann", str(folders / "ann"), "--out", str(tsm),
                          "--steps", "1", "--batch-size", "2"]) == 0
    capsys.readouterr()
    refused(capsys, finetune.main(["--snn", str(tsm), "--ann", str(folders / "ann"), "--out", str(tmp_path / "o"),
                                   "--method", "qat"]), "TSM model")
    other = tmp_path / "other"
    make_tiny_source(seed=1).unet.save_pretrained(other)
    refused(capsys, finetune.main(["--snn", str(folders / "snn"), "--ann", str(other), "--out", str(tmp_path / "o"),
                                   "--method", "qat"]), "converted from another model")
    refused(capsys, tune(folders, tmp_path / "o", "--train", "all"), "--train is for --method tsm")
    refused(capsys, finetune.main(["--snn", str(folders / "snn"), "--out", str(tmp_path / "o"), "--weights", "all"]),
            "--weights is for --method qat")
    refused(capsys, tune(folders, tmp_path / "o", "--pool", "record", "--refresh-every", "5"), "needs --pool trajectories")
    assert not (tmp_path / "o").exists()

"""QAT's spike penalty (`sdm-finetune --method qat --spike-penalty`, converter/finetune/qat.py
SpikeCounter) on the tiny model: the counter counts what the step simulation reports, its gradient
reaches every trainable kind (activation checkpointing included), weight 0 changes nothing, a
large weight lowers the held-out spike rate, and the refusals."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sdm.cli import finetune as finetune_cli
from sdm.converter.convert import convert
from sdm.converter.finetune import qat
from sdm.converter.finetune.settings import FinetuneError, FinetuneSettings
from sdm.converter.finetune.trainable import clamp_thresholds_
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.diffusion import recomputed, run_trajectory

from tests.conftest import TWIN_INPUTS, TWIN_TIMESTEPS, assert_refused, save_ann_and_snn

X, TIMES = TWIN_INPUTS, TWIN_TIMESTEPS
WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_counter_counts_the_units_the_step_simulation_reports(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4)).double()  # float64: no ties
    with torch.no_grad():
        snn.set_monitor(True)
        snn(X.double(), TIMES)
        neurons = snn.neurons().values()
        units, neuron_steps = sum(n.spike_count for n in neurons), sum(n.neuron_steps for n in neurons)
        snn.set_monitor(False)
        snn.set_simulation("closed-form")
        with qat.SpikeCounter(snn) as counter:
            snn(X.double(), TIMES)
    assert len(counter.units) == len(snn.sites()) and all(float(u) == round(float(u)) for u in counter.units)
    assert counter.neuron_steps == neuron_steps
    assert 0 < float(sum(counter.units)) == units  # the same whole units
    assert float(counter.rate()) == pytest.approx(units / neuron_steps, rel=1e-6)  # a float32 rate


@pytest.mark.parametrize("weights", ["none", "lora", "all"])
def test_penalty_gradient_reaches_every_trainable_kind(tiny_source, tiny_record, weights):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    named = qat.prepare(snn, weights, rank=2)
    with qat.SpikeCounter(snn) as counter:
        snn(X, TIMES)
        counter.rate().backward()
    grads = {name: p.grad for name, p in named}
    kinds = {"threshold_pos", "threshold_neg", "output_shift"} | ({"up"} if weights == "lora" else set()) \
        | ({"conv1.weight"} if weights == "all" else set())
    for kind in kinds:
        assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if name.endswith(kind)), kind


def test_penalty_gradient_is_the_same_under_activation_checkpointing(tiny_source, tiny_record):
    """The sample target's unrolled trajectory with `recomputed` passes: same rate and gradients as
    without checkpointing, each pass counted once although backward reruns it."""
    grads, rates = [], []
    for checkpointed in (False, True):
        snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
        named = qat.prepare(snn, "lora", rank=2)
        with torch.no_grad():  # adapters off zero, so their gradients are not trivially equal
            for name, p in named:
                if name.endswith(".up"):
                    p.normal_(0, 0.01, generator=torch.Generator().manual_seed(len(name)))

        def eps(x, t):
            return snn(x, t).sample

        with qat.SpikeCounter(snn) as counter:
            sample = run_trajectory(recomputed(eps) if checkpointed else eps, X[:2], "ddim",
                                    tiny_source.scheduler_config, 3, differentiable=True)
            rate = counter.rate()
            counter.recording = False
            (F.mse_loss(sample, torch.zeros_like(sample)) + 5.0 * rate).backward()
        assert len(counter.units) == 3 * len(snn.sites())  # three passes, averaged over all of them
        rates.append(rate.detach())
        grads.append({name: p.grad.clone() for name, p in named})
    assert torch.equal(rates[0], rates[1])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-9, msg=name)
    assert any(g.abs().sum() > 0 for name, g in grads[1].items() if name.endswith(".up"))


def test_counting_changes_no_training_step(tiny_source, tiny_record):
    """Hooks that count but add nothing to the loss leave training bit for bit as it was."""
    results = []
    for counting in (False, True):
        snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
        named = qat.prepare(snn, "lora", rank=2)
        optimizer = torch.optim.Adam([p for _, p in named], lr=0.02)
        with torch.no_grad():
            target = tiny_source.unet(X, TIMES).sample
        for _ in range(3):
            optimizer.zero_grad()
            with qat.SpikeCounter(snn) if counting else torch.enable_grad():
                F.mse_loss(snn(X, TIMES).sample, target).backward()
            optimizer.step()
            clamp_thresholds_(snn)
        results.append({name: p.detach().clone() for name, p in named})
    assert all(torch.equal(results[0][name], results[1][name]) for name in results[0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_source, tiny_record):
    return save_ann_and_snn(tmp_path_factory.mktemp("spike-penalty"), tiny_source, tiny_record, timesteps=4)


TARGETS = {"eps": ["--refresh-every", "3"], "sample": ["--distill-target", "sample", "--batch-size", "2", "--eval-size", "4"]}


def tune(folders, out, *extra):
    return finetune_cli.main(["--snn", str(folders / "snn"), "--ann", str(folders / "ann"), "--out", str(out),
                              "--method", "qat", "--batch-size", "4", "--trajectories", "4", "--trajectory-steps", "3",
                              "--checkpoint-every", "0", "--weights", "lora", "--rank", "2", *extra])


def summary_of(out):
    return json.loads((out / "finetune.json").read_text())


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_large_penalty_lowers_the_held_out_spike_rate(folders, tmp_path, target):
    options = ["--steps", "4", "--lr", "0.02", *TARGETS[target]]
    assert tune(folders, tmp_path / "plain", *options) == 0
    assert tune(folders, tmp_path / "penalised", *options, "--spike-penalty", "10") == 0
    plain, penalised = summary_of(tmp_path / "plain"), summary_of(tmp_path / "penalised")
    assert penalised["recipe"]["spike_penalty"] == 10 and plain["recipe"]["spike_penalty"] == 0
    assert penalised["spike_rate"]["penalty_weight"] == 10 and "per neuron and SNN step" in penalised["spike_rate"]["note"]
    assert penalised["spike_rate"]["before"] == plain["spike_rate"]["before"]  # the same model on the same inputs
    assert penalised["spike_rate"]["after"] < min(plain["spike_rate"]["after"], plain["spike_rate"]["before"]), \
        (plain["spike_rate"], penalised["spike_rate"])
    after = penalised["loss_after"]  # the held-out loss charges the rate as training does
    distill = after["distill_sample"] if target == "sample" else after["distill_weighted"]
    assert after["loss"] == pytest.approx(distill + 10 * after["spike_rate"])


def test_penalty_zero_is_the_run_without_the_option(folders, tmp_path):
    assert tune(folders, tmp_path / "without", "--steps", "3", "--lr", "0.02") == 0
    assert tune(folders, tmp_path / "zero", "--steps", "3", "--lr", "0.02", "--spike-penalty", "0") == 0
    without, zero = load_file(str(tmp_path / "without" / WEIGHTS)), load_file(str(tmp_path / "zero" / WEIGHTS))
    assert set(without) == set(zero) and all(torch.equal(without[k], zero[k]) for k in without)
    assert (tmp_path / "without" / "loss_log.csv").read_text() == (tmp_path / "zero" / "loss_log.csv").read_text()
    summary = summary_of(tmp_path / "zero")
    assert summary["loss_after"]["loss"] == summary["loss_after"]["distill_weighted"]  # no penalty term
    assert summary["spike_rate"]["penalty_weight"] == 0 and summary["spike_rate"]["after"] > 0  # still measured


def test_resume_refuses_another_penalty(folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert tune(folders, out, "--steps", "1", "--spike-penalty", "1") == 0
    capsys.readouterr()
    assert_refused(capsys, tune(folders, out, "--steps", "2", "--spike-penalty", "0.5", "--resume"), "sdm-finetune",
                   "was made with --spike-penalty 1.0, this run has 0.5")


def test_refusals(folders, tmp_path, capsys):
    with pytest.raises(FinetuneError, match="--spike-penalty must be >= 0"):
        FinetuneSettings(snn=folders / "snn", out=tmp_path / "o", steps=1, batch_size=1, lr=1e-3, ema=0,
                         checkpoint_every=0, method="qat", spike_penalty=float("nan"))
    assert_refused(capsys, tune(folders, tmp_path / "o", "--spike-penalty", "-1"), "sdm-finetune",
                   "--spike-penalty must be >= 0 and finite, got -1.0")
    assert_refused(capsys, finetune_cli.main(["--snn", str(folders / "snn"), "--out", str(tmp_path / "o"),
                                              "--spike-penalty", "1"]), "sdm-finetune",
                   "--spike-penalty is for --method qat")
    assert not (tmp_path / "o").exists()

"""One fine-tuning run's library parts (converter/finetune/run.py) on the tiny model: the losses, how
batches are drawn, the trainer's checkpoint state and the checks a resumed checkpoint must pass,
and the refusals `finetune` makes before it loads the ANN. Whole runs through `sdm-finetune`
(training, resume bit for bit, refusals of its options) are in tests/cli/test_finetune*.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler
from sdm.converter.convert import convert
from sdm.converter.finetune.pool import Pool
from sdm.converter.finetune.run import (CHECKPOINT_FORMAT, Trainer, check_checkpoint, finetune, mean_log_mse,
                                        per_sample_mse)
from sdm.converter.finetune.settings import FinetuneError, FinetuneSettings
from sdm.converter.finetune.step_sensitivity import StepSensitivity
from sdm.converter.folder import save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.training import load_checkpoint, save_checkpoint
from sdm.pretrained.loading import DEFAULT_SCHEDULER_CONFIG

CPU = torch.device("cpu")
IDENTITY = {"source_fingerprint": "source", "snn_fingerprint": "snn", "timesteps": 2}
_noise = torch.Generator().manual_seed(0)
POOL = Pool(torch.randn(8, 3, 8, 8, generator=_noise), torch.tensor([900] * 4 + [20] * 4),
            torch.randn(8, 3, 8, 8, generator=_noise))


def settings(tmp_path, **options) -> FinetuneSettings:
    return FinetuneSettings(**{"snn": tmp_path / "snn", "out": tmp_path / "out", "steps": 4, "batch_size": 4,
                               "lr": 0.02, "ema": 0.0, "checkpoint_every": 0, **options})


def trainer(tiny_source, tiny_record, tmp_path, sensitivity=None, **options) -> Trainer:
    """A trainer of a fresh T = 2 conversion on POOL (the trainer makes the model's trainable set its own)."""
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    return Trainer(settings(tmp_path, **options), snn, POOL, None, DDPMScheduler.from_config(DEFAULT_SCHEDULER_CONFIG),
                   CPU, sensitivity=sensitivity)


def test_per_sample_losses():
    """--sample-loss psnr averages log MSE: every sample's relative change counts alike, whatever its size."""
    target = torch.zeros(3, 2, 2)
    output = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 2.0)])
    error = per_sample_mse(output, target)
    assert error.tolist() == [0.0, 1.0, 4.0]
    assert float(mean_log_mse(error)) == pytest.approx((math.log(1e-12) + 0.0 + math.log(4.0)) / 3)  # 0 clamped: finite
    small_doubled, large_doubled = torch.tensor([2.0, 100.0]), torch.tensor([1.0, 200.0])  # from [1, 100]
    assert float(mean_log_mse(small_doubled)) == pytest.approx(float(mean_log_mse(large_doubled)))
    assert float(small_doubled.mean()) < float(large_doubled.mean())  # which plain MSE does not do


def test_a_checkpoint_of_another_conversion_is_refused(tmp_path):
    recipe = settings(tmp_path).recipe()
    state = {**IDENTITY, "recipe": dict(recipe), "step": 2}
    check_checkpoint(state, tmp_path / "checkpoint.pt", IDENTITY, recipe, steps=4)
    with pytest.raises(FinetuneError, match="belongs to another conversion of this model"):
        check_checkpoint({**state, "snn_fingerprint": "rethresholded"}, tmp_path / "checkpoint.pt", IDENTITY, recipe, 4)


def test_a_checkpoint_from_before_the_spike_penalty_trained_without_it(tmp_path):
    recipe = settings(tmp_path, method="qat").recipe()
    old = {key: value for key, value in recipe.items() if key != "spike_penalty"}
    check_checkpoint({**IDENTITY, "recipe": dict(old), "step": 2}, tmp_path / "checkpoint.pt", IDENTITY, recipe, 4)
    penalised = settings(tmp_path, method="qat", spike_penalty=0.5).recipe()
    with pytest.raises(FinetuneError, match="was made with --spike-penalty 0.0, this run has 0.5"):
        check_checkpoint({**IDENTITY, "recipe": dict(old), "step": 2}, tmp_path / "checkpoint.pt", IDENTITY, penalised, 4)


def test_step_sensitivity_draws_inputs_by_their_steps_gain(tiny_source, tiny_record, tmp_path):
    uniform = trainer(tiny_source, tiny_record, tmp_path, batch_size=64)
    assert set(uniform.distill_batch()[1].tolist()) == {900, 20}
    gains = StepSensitivity(timesteps=[900, 20], eps_mse=[1.0, 1.0], final_mse=[0.001, 1.0])  # t = 20 costs 1000x more
    weighted = trainer(tiny_source, tiny_record, tmp_path, sensitivity=gains, batch_size=64)
    x, t, target = weighted.distill_batch()
    assert (t == 20).sum() >= 60 and x.shape == target.shape == (64, 3, 8, 8)
    index = [int(torch.nonzero((POOL.x == row).flatten(1).all(dim=1))[0]) for row in x]
    assert torch.equal(POOL.t[index], t) and torch.equal(POOL.target[index], target)  # inputs keep their targets


def test_checkpoint_state_restores_the_trained_values_and_refuses_another_trainable_set(tiny_source, tiny_record, tmp_path):
    first = trainer(tiny_source, tiny_record, tmp_path)
    first.train_step()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(first.state(IDENTITY, first.settings.recipe(), {"distill": 1.0}), path)
    state = load_checkpoint(path, CHECKPOINT_FORMAT, "sdm-finetune", FinetuneError)  # weights_only: plain values only
    assert state["loss_before"] == {"distill": 1.0} and state["recipe"] == first.settings.recipe()
    second = trainer(tiny_source, tiny_record, tmp_path)
    assert not all(torch.equal(p, q) for (_, p), (_, q) in zip(first.named, second.named))
    second.load_state(state)
    assert second.step == 1 and second.losses == first.losses
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(first.named, second.named))
    with pytest.raises(FinetuneError, match="^checkpoint's trainable values do not match this model's$"):
        trainer(tiny_source, tiny_record, tmp_path, train="thresholds").load_state(state)
    name = next(iter(state["trainable"]))
    state["trainable"][name] = torch.ones(5)
    with pytest.raises(FinetuneError, match=rf"^checkpoint's {name} has shape \(5,\), the model's \(2,\)$"):
        trainer(tiny_source, tiny_record, tmp_path).load_state(state)


@pytest.fixture
def folder(tiny_source, tiny_record, tmp_path):
    """A T = 2 converted folder saved without its calibration record."""
    snn = tmp_path / "snn"
    snn.mkdir()
    save_converted(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2)), None, snn)
    return snn


def test_finetune_refuses_a_folder_it_cannot_train_from_before_loading_the_ann(folder, tmp_path):
    options = dict(snn=folder, ann=str(tmp_path / "no-ann"))  # never loaded: the checks come first
    with pytest.raises(FinetuneError, match="has no calibration inputs stored in its record; use --pool trajectories"):
        finetune(settings(tmp_path, **options))
    config = json.loads((folder / "config.json").read_text())
    del config["provenance"]["scheduler_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FinetuneError, match="records no scheduler config in its provenance; re-run sdm-convert"):
        finetune(settings(tmp_path, pool="trajectories", **options))
    assert not (tmp_path / "out").exists() and not (tmp_path / "no-ann").exists()

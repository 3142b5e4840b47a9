"""Fine-tuning's inputs (converter/finetune/pool.py) on the tiny model: the distillation pool holds the
ANN's own eps on x_t of its trajectories, its fresh part (always last) is a function of (seed,
generation) so a resumed run rebuilds it, held-out inputs and noises are never trained on, and the
refusals."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sdm.converter.convert import convert
from sdm.converter.finetune.pool import (HELD_OUT_SEED, Pool, ann_samples, ann_targets, ann_trajectories, build_pool,
                                        held_out_inputs, held_out_samples, load_images, refresh_pool, step_sensitivity,
                                        training_noises, trajectory_seed)
from sdm.converter.finetune.settings import FinetuneError, FinetuneSettings
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.diffusion import initial_noise, sample_shape

CPU = torch.device("cpu")
COUNT, STEPS = 2, 3  # fresh trajectories and their DDIM steps: COUNT x STEPS inputs


def settings(tmp_path: Path, **options) -> FinetuneSettings:
    return FinetuneSettings(**{"snn": tmp_path / "snn", "out": tmp_path / "out", "steps": 1, "batch_size": 3,
                               "lr": 1e-3, "ema": 0.0, "checkpoint_every": 0, "method": "qat",
                               "trajectories": COUNT, "trajectory_steps": STEPS, **options})


def rows(x: torch.Tensor) -> set[bytes]:
    """The inputs of a batch, hashable (to see that two sets share none)."""
    return {item.numpy().tobytes() for item in x}


def test_trajectories_hold_the_anns_eps_on_the_inputs_it_visits(tiny_source):
    pool = ann_trajectories(tiny_source, COUNT, STEPS, seed=5, device=CPU)
    assert len(pool) == COUNT * STEPS and pool.x.shape[1:] == sample_shape(tiny_source.unet)
    assert pool.t.dtype == torch.long and pool.t.tolist() == sorted(pool.t.tolist(), reverse=True)  # one chunk, step by step
    torch.testing.assert_close(ann_targets(tiny_source.unet, pool.x, pool.t, CPU), pool.target, rtol=1e-5, atol=1e-6)
    again = ann_trajectories(tiny_source, COUNT, STEPS, seed=5, device=CPU)
    assert torch.equal(again.x, pool.x) and torch.equal(again.target, pool.target)
    assert len(Pool.empty()) == 0


def test_both_pools_put_the_record_first_and_fresh_trajectories_last(tiny_source, tiny_record, tmp_path):
    options = settings(tmp_path, pool="both")
    pool = build_pool(options, tiny_source, tiny_record, CPU)
    stored = len(tiny_record.inputs)
    assert len(pool) == stored + COUNT * STEPS
    assert torch.equal(pool.x[:stored], tiny_record.inputs.float())
    assert torch.equal(pool.t[:stored], tiny_record.input_timesteps.long())
    fresh = ann_trajectories(tiny_source, COUNT, STEPS, trajectory_seed(options.seed, 0), CPU)
    assert torch.equal(pool.x[stored:], fresh.x) and torch.equal(pool.target[stored:], fresh.target)


def test_a_refresh_replaces_only_the_fresh_part_and_is_a_function_of_the_generation(tiny_source, tiny_record, tmp_path):
    options = settings(tmp_path, pool="both")
    first = build_pool(options, tiny_source, tiny_record, CPU)
    stored = len(tiny_record.inputs)
    second = refresh_pool(first, options, tiny_source, CPU, generation=1)
    assert len(second) == len(first) and torch.equal(second.x[:stored], first.x[:stored])
    assert not rows(second.x[stored:]) & rows(first.x)  # new seeds: new inputs
    again = refresh_pool(refresh_pool(first, options, tiny_source, CPU, generation=2), options, tiny_source, CPU, generation=1)
    assert torch.equal(again.x, second.x) and torch.equal(again.target, second.target)  # what a resumed run rebuilds
    assert len({trajectory_seed(0, g) for g in range(50)} | {HELD_OUT_SEED}) == 51


def test_record_pools_need_stored_calibration_inputs(tiny_source, tmp_path):
    for pool in ("record", "both"):
        with pytest.raises(FinetuneError, match="has no calibration inputs stored in its record; use --pool trajectories"):
            build_pool(settings(tmp_path, pool=pool, refresh_every=0), tiny_source, None, CPU)


def test_held_out_inputs_spread_over_trajectories_no_generation_trains_on(tiny_source, tmp_path):
    options = settings(tmp_path, eval_size=5)  # ceil(5 / 3) = 2 trajectories, 6 inputs, 5 of them kept
    held_out = held_out_inputs(options, tiny_source, CPU)
    assert len(held_out) == 5 and set(held_out.t.tolist()) == set(ann_trajectories(tiny_source, 1, STEPS, 0, CPU).t.tolist())
    training = [ann_trajectories(tiny_source, COUNT, STEPS, trajectory_seed(options.seed, g), CPU) for g in range(3)]
    assert not any(rows(held_out.x) & rows(pool.x) for pool in training)


def test_training_noises_are_seeded_per_step_and_held_out_samples_are_the_anns(tiny_source, tmp_path):
    options, shape = settings(tmp_path, eval_size=2), sample_shape(tiny_source.unet)
    noise = training_noises(options, shape, step=4)
    assert noise.shape == (options.batch_size, *shape) and torch.equal(training_noises(options, shape, 4), noise)
    assert not torch.equal(training_noises(options, shape, 5), noise)
    assert not torch.equal(training_noises(settings(tmp_path, seed=1), shape, 4), noise)
    held_out = held_out_samples(options, tiny_source, CPU)
    assert torch.equal(held_out.noise, initial_noise(2, shape, HELD_OUT_SEED))
    assert torch.equal(held_out.sample, ann_samples(tiny_source, held_out.noise, STEPS, CPU))
    assert held_out.sample.abs().max() <= 1 and held_out.sample.std() > 0  # the image range, clipped


def test_images_come_as_uint8_nchw_at_the_models_resolution(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    options = settings(tmp_path, data=folder, data_weight=1.0, data_limit=2)
    images = load_images(options, SimpleNamespace(config=SimpleNamespace(in_channels=3, sample_size=8)))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 8, 8) and images.is_contiguous()
    with pytest.raises(FinetuneError, match="--data needs a 3-channel \\(RGB\\) model; this one has 1 input channels"):
        load_images(options, SimpleNamespace(config=SimpleNamespace(in_channels=1, sample_size=8)))


def test_qat_measures_step_sensitivity_on_its_twin(tiny_source, tiny_record, tmp_path):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    measured = step_sensitivity(settings(tmp_path, sensitivity_samples=2, trajectory_steps=2), snn, tiny_source, CPU)
    assert snn.simulation == "closed-form"  # which the steps equal, at one pass per input
    assert len(measured.timesteps) == 2 and all(value > 0 for value in measured.eps_mse)

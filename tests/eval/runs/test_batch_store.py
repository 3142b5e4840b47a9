"""Kept batches: a killed run continues with byte-identical samples, runs over fewer samples share
their batches, another run's store is refused."""

import pytest
import torch
from sdm.core.diffusion import as_eps_function, initial_noise
from sdm.eval.runs.batch_store import BatchStore, BatchStoreError
from sdm.eval.runs.sampling import run_sampler

IDENTITY = {"model": "tiny", "sampler": "ddpm", "steps": 3, "seed": 5, "batch_size": 2}


class Killed(Exception):
    pass


def _sample(tiny_source, eps, store=None, samples=5):
    noise = initial_noise(samples, (3, 8, 8), 5)
    return run_sampler(eps, noise, "ddpm", tiny_source.scheduler_config, 3, seed=5, batch_size=2,
                       reference=as_eps_function(tiny_source.unet), store=store)


def _counted(eps, dies_at_call: int | None = None):
    """`eps` that counts its calls (calls[0]) and raises Killed at call `dies_at_call`."""
    calls = [0]

    def counted(x, t):
        calls[0] += 1
        if calls[0] == dies_at_call:
            raise Killed
        return eps(x, t)
    return counted, calls


def test_a_killed_run_continues_with_the_same_samples(tiny_source, tmp_path):
    ann = as_eps_function(tiny_source.unet)
    uninterrupted = _sample(tiny_source, ann)
    # 3 steps per batch: at call 5 the first batch is done, the second is not
    dies_in_the_second_batch, _ = _counted(ann, dies_at_call=5)
    with pytest.raises(Killed):
        _sample(tiny_source, dies_in_the_second_batch, BatchStore(tmp_path / "ann", IDENTITY))
    assert BatchStore(tmp_path / "ann", IDENTITY).finished() == [0]
    resumed = _sample(tiny_source, ann, BatchStore(tmp_path / "ann", IDENTITY))
    assert torch.equal(resumed.samples, uninterrupted.samples)
    assert resumed.samples.numpy().tobytes() == uninterrupted.samples.numpy().tobytes()
    assert torch.equal(resumed.eps_rel_l2_samples, uninterrupted.eps_rel_l2_samples)
    assert resumed.unet_calls == uninterrupted.unet_calls == 9

    def must_not_run(x, t):
        raise AssertionError("every batch is kept: nothing is sampled again")

    again = _sample(tiny_source, must_not_run, BatchStore(tmp_path / "ann", IDENTITY))
    assert torch.equal(again.samples, uninterrupted.samples)


def test_a_store_of_another_run_is_refused_in_one_line(tmp_path):
    BatchStore(tmp_path / "s", IDENTITY)
    with pytest.raises(BatchStoreError, match="belongs to another run \\(differs in seed\\)"):
        BatchStore(tmp_path / "s", {**IDENTITY, "seed": 6})
    (tmp_path / "s" / "batch-000000.safetensors").write_bytes(b"not a batch")
    noise = initial_noise(2, (3, 8, 8), 0)
    with pytest.raises(BatchStoreError, match="unreadable batch"):
        BatchStore(tmp_path / "s", IDENTITY).load(0, noise)
    store = BatchStore(tmp_path / "s", IDENTITY)
    store.save(1, noise, {"samples": torch.zeros(2, 3, 8, 8)})
    assert torch.equal(store.load(1, noise)["samples"], torch.zeros(2, 3, 8, 8))
    with pytest.raises(BatchStoreError, match="was not sampled from this run's noise: use another folder"):
        store.load(1, initial_noise(2, (3, 8, 8), 1))


def test_a_run_over_fewer_samples_shares_its_batches(tiny_source, tmp_path):
    ann = as_eps_function(tiny_source.unet)
    uninterrupted = _sample(tiny_source, ann)
    counted, calls = _counted(ann)
    fewer = _sample(tiny_source, counted, BatchStore(tmp_path / "ann", IDENTITY), samples=3)
    assert calls[0] == 6 and torch.equal(fewer.samples[:2], uninterrupted.samples[:2])
    assert sorted(p.name for p in (tmp_path / "ann").glob("batch-*")) == ["batch-000000.safetensors",
                                                                          "batch-000001-of-1.safetensors"]
    more = _sample(tiny_source, counted, BatchStore(tmp_path / "ann", IDENTITY))
    assert calls[0] == 6 + 6  # batch 0 kept; batch 1 now of 2 samples and batch 2 of 1 sampled
    assert more.samples.numpy().tobytes() == uninterrupted.samples.numpy().tobytes()
    assert torch.equal(_sample(tiny_source, counted, BatchStore(tmp_path / "ann", IDENTITY), samples=3).samples,
                       fewer.samples) and calls[0] == 12

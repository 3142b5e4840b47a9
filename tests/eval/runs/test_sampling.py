"""Paired sampling: the per-step eps error is measured on the sampled model's own x_t, batches are independent."""

import pytest
import torch
from sdm.core.diffusion import as_eps_function, initial_noise, sample_shape
from sdm.eval.runs.sampling import run_sampler

STEPS = 3


def test_a_model_against_itself_has_no_eps_error(tiny_source):
    unet = as_eps_function(tiny_source.unet)
    noise = initial_noise(2, sample_shape(tiny_source.unet), 0)
    run = run_sampler(unet, noise, "ddim", tiny_source.scheduler_config, STEPS, 0, 2, reference=unet)
    assert run.eps_rel_l2 == pytest.approx([0.0] * STEPS, abs=1e-6)
    assert run.eps_cosine == pytest.approx([1.0] * STEPS, abs=1e-6)
    assert run.unet_calls == STEPS and run.unet_seconds > 0
    assert run.samples.shape == noise.shape and run.samples.abs().max() <= 1


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm"])
def test_samples_are_reproducible_and_independent_of_the_batch_split(tiny_source, sampler):
    unet = as_eps_function(tiny_source.unet)
    noise = initial_noise(2, sample_shape(tiny_source.unet), 1)
    whole = run_sampler(unet, noise, sampler, tiny_source.scheduler_config, STEPS, 0, 2)
    again = run_sampler(unet, noise, sampler, tiny_source.scheduler_config, STEPS, 0, 2)
    assert torch.equal(whole.samples, again.samples)
    if sampler != "ddpm":  # deterministic samplers: an image's sample is its own business
        halves = run_sampler(unet, noise, sampler, tiny_source.scheduler_config, STEPS, 0, 1)
        torch.testing.assert_close(halves.samples, whole.samples, rtol=1e-4, atol=1e-4)  # batch-size rounding
        assert halves.unet_calls == 2 * STEPS


def test_the_eps_error_grows_with_a_perturbed_model(tiny_source):
    unet = as_eps_function(tiny_source.unet)
    noisy = lambda x, t: unet(x, t) * 1.1  # noqa: E731
    noise = initial_noise(2, sample_shape(tiny_source.unet), 0)
    run = run_sampler(noisy, noise, "ddim", tiny_source.scheduler_config, STEPS, 0, 2, reference=unet)
    assert run.eps_rel_l2 == pytest.approx([0.1] * STEPS, rel=1e-4)


def test_eps_errors_on_the_first_samples_only_are_the_full_runs_first_rows(tiny_source):
    unet = as_eps_function(tiny_source.unet)
    noisy = lambda x, t: unet(x, t) * 1.1  # noqa: E731
    calls = [0]

    def counted(x, t):
        calls[0] += 1
        return unet(x, t)

    noise = initial_noise(5, sample_shape(tiny_source.unet), 2)
    full = run_sampler(noisy, noise, "ddim", tiny_source.scheduler_config, STEPS, 0, 2, reference=unet)
    part = run_sampler(noisy, noise, "ddim", tiny_source.scheduler_config, STEPS, 0, 2, reference=counted,
                       reference_samples=3)
    assert calls[0] == 2 * STEPS  # batches starting at samples 0 and 2; the one at 4 is not measured
    assert part.eps_rel_l2_samples.shape == (4, STEPS)
    torch.testing.assert_close(part.eps_rel_l2_samples, full.eps_rel_l2_samples[:4])
    assert torch.equal(part.samples, full.samples)

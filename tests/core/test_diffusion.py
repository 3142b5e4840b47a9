"""The shared diffusion mechanics: one trajectory loop, forward noising q(x_t | x_0) and the training target."""

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
from sdm.core.diffusion import (data_target, forward_noising, initial_noise, make_sampler, recomputed, run_trajectory,
                                sample_shape, to_model_range, training_example)
from sdm.core.errors import SdmError


def test_the_trajectory_equals_diffusers_ddim_pipeline(tiny_source):
    scheduler = DDIMScheduler.from_config(tiny_source.scheduler_config)
    pipeline = DDIMPipeline(unet=tiny_source.unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(batch_size=2, num_inference_steps=3, eta=0.0, generator=torch.Generator().manual_seed(5),
                        output_type="np").images
    noise = torch.randn((2, *sample_shape(tiny_source.unet)), generator=torch.Generator().manual_seed(5))
    seen = []
    x = run_trajectory(lambda x, t: tiny_source.unet(x, t).sample, noise, "ddim", tiny_source.scheduler_config, 3,
                       observe=lambda step, t, x_t, eps: seen.append((step, int(t))))
    got = ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    assert got == pytest.approx(expected, abs=1e-5)
    assert [s for s, _ in seen] == [0, 1, 2] and seen[0][1] > seen[-1][1]


def test_a_differentiable_trajectory_is_the_same_walk_with_gradients(tiny_source):
    noise = initial_noise(2, sample_shape(tiny_source.unet), 3)
    eps = lambda x, t: tiny_source.unet(x, t).sample
    plain = run_trajectory(eps, noise, "ddim", tiny_source.scheduler_config, 3)
    assert not plain.requires_grad  # no graph unless asked, even with parameters that need gradients
    start = noise.clone().requires_grad_(True)
    walked = run_trajectory(eps, start, "ddim", tiny_source.scheduler_config, 3, differentiable=True)
    torch.testing.assert_close(walked.detach(), plain, rtol=0, atol=1e-6)
    walked.square().sum().backward()
    assert start.grad is not None and start.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tiny_source.unet.parameters() if p.requires_grad)
    tiny_source.unet.zero_grad(set_to_none=True)


def test_recomputed_activations_give_the_same_trajectory_gradients(tiny_source):
    noise = initial_noise(2, sample_shape(tiny_source.unet), 4)
    eps = lambda x, t: tiny_source.unet(x, t).sample
    grads = []
    for fn in (eps, recomputed(eps)):
        tiny_source.unet.zero_grad(set_to_none=True)
        run_trajectory(fn, noise, "ddim", tiny_source.scheduler_config, 3, differentiable=True).square().sum().backward()
        grads.append([p.grad.clone() for p in tiny_source.unet.parameters()])
    tiny_source.unet.zero_grad(set_to_none=True)
    for plain, again in zip(*grads):
        torch.testing.assert_close(again, plain, rtol=1e-5, atol=1e-7)


def test_forward_noising_is_q_of_x_t_given_x_0():
    schedule = DDPMScheduler(num_train_timesteps=1000)
    x0, t = torch.rand(3, 3, 4, 4) * 2 - 1, torch.tensor([0, 500, 999])
    x_t, noise = forward_noising(schedule, x0, t, torch.Generator().manual_seed(0))
    alpha = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise)


def test_training_example_targets_follow_the_prediction_type():
    x0 = to_model_range(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8))
    assert torch.equal(x0, torch.ones(2, 3, 4, 4))
    for kind in ("epsilon", "sample", "v_prediction"):
        schedule = DDPMScheduler(num_train_timesteps=100, prediction_type=kind)
        _, t, target = training_example(schedule, x0, torch.Generator().manual_seed(1))
        assert target.shape == x0.shape and t.max() < 100
        if kind == "sample":
            assert torch.equal(target, x0)
    eps = DDPMScheduler(num_train_timesteps=100)
    generator = torch.Generator().manual_seed(3)
    _, t, target = training_example(eps, x0, generator)
    replay = torch.Generator().manual_seed(3)
    t_again = torch.randint(0, 100, (2,), generator=replay)
    assert torch.equal(t, t_again) and torch.equal(target, torch.randn(x0.shape, generator=replay))
    assert torch.equal(data_target(eps, x0, target, t), target)


def test_bad_sampler_and_sample_counts_are_refused():
    with pytest.raises(SdmError, match="unknown sampler"):
        make_sampler("euler", {}, 3)
    with pytest.raises(SdmError, match="must be >= 1"):
        initial_noise(0, (3, 4, 4), 0)

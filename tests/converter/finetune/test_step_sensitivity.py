"""Per-step sensitivity (converter/finetune/step_sensitivity.py): the replayed ANN prefix is the reference
trajectory exactly, an error at one step shows at that step only, and the sampling weights."""

import torch
from sdm.converter.finetune.step_sensitivity import MIN_GAIN_FRACTION, StepSensitivity, measure_step_sensitivity
from sdm.core.diffusion import as_eps_function, initial_noise, sample_shape

STEPS = 5


def measure(tiny_source, snn):
    noise = initial_noise(3, sample_shape(tiny_source.unet), 7)
    return measure_step_sensitivity(snn, as_eps_function(tiny_source.unet), noise, "ddim",
                                    tiny_source.scheduler_config, STEPS)


def test_the_ann_itself_costs_nothing_at_any_step(tiny_source):
    result = measure(tiny_source, as_eps_function(tiny_source.unet))
    assert len(result.timesteps) == STEPS and result.timesteps == sorted(result.timesteps, reverse=True)
    assert result.eps_mse == [0.0] * STEPS and result.final_mse == [0.0] * STEPS


def test_an_error_at_one_timestep_is_charged_to_that_step_only(tiny_source):
    ann = as_eps_function(tiny_source.unet)
    timesteps = measure(tiny_source, ann).timesteps
    hit = timesteps[2]

    def snn(x, t):
        return ann(x, t) + (0.1 if int(t) == hit else 0.0)

    result = measure(tiny_source, snn)
    for t, eps, final in zip(result.timesteps, result.eps_mse, result.final_mse):
        if t == hit:
            assert abs(eps - 0.01) < 1e-6 and final > 0
        else:
            assert eps == 0.0 and final == 0.0


def test_weights_interpolate_the_gains_in_t_and_never_vanish():
    result = StepSensitivity(timesteps=[900, 500, 100], eps_mse=[1.0, 1.0, 2.0], final_mse=[4.0, 2.0, 0.0])
    assert result.gains == [4.0, 2.0, 0.0]
    weights = result.weights_at(torch.tensor([900, 700, 500, 100, 0]))
    assert torch.allclose(weights, torch.tensor([4.0, 3.0, 2.0, 4.0 * MIN_GAIN_FRACTION, 4.0 * MIN_GAIN_FRACTION],
                                                dtype=torch.float64))
    assert StepSensitivity.from_json(result.to_json()) == result

"""Calibration runs the ANN along its own DDIM trajectories (or on noised images) and records every site."""

import pytest
import torch
from sdm.calibration.collect import calibrate, calibrate_data_free, calibrate_from_data
from sdm.calibration.settings import CalibrationError, CalibrationSettings
from sdm.calibration.sites import all_sites
from sdm.core.diffusion import initial_noise, make_sampler, sample_shape

from tests.conftest import TINY_CALIBRATION


def test_data_free_record_covers_every_site_along_the_ddim_trajectory(tiny_source, tiny_record):
    settings = TINY_CALIBRATION
    assert list(tiny_record.sites) == list(all_sites(tiny_source.unet))  # activation and stream sites
    ddim = [int(t) for t in make_sampler("ddim", tiny_source.scheduler_config, settings.steps).timesteps]
    assert tiny_record.meta["diffusion_timesteps"] == ddim
    assert tiny_record.inputs.shape == (settings.num_samples * settings.steps, *sample_shape(tiny_source.unet))
    # the first stored x_t of each trajectory is its seeded starting noise
    noise = initial_noise(settings.num_samples, sample_shape(tiny_source.unet), settings.seed)
    assert torch.equal(tiny_record.inputs[: settings.num_samples], noise)
    assert tiny_record.input_timesteps[: settings.num_samples].eq(ddim[0]).all()
    for stats in tiny_record.sites.values():
        assert stats.z_quantiles.shape == (stats.channels, settings.quantiles)
        assert torch.all(stats.z_quantiles[:, 1:] >= stats.z_quantiles[:, :-1])  # a sorted sketch
        assert torch.all(stats.group_var > 0)


def test_the_same_seed_gives_the_same_record(tiny_source, tiny_record):
    again = calibrate_data_free(tiny_source.unet, tiny_source.scheduler_config, TINY_CALIBRATION, "fp")
    for name, stats in tiny_record.sites.items():
        assert torch.equal(again.sites[name].z_quantiles, stats.z_quantiles)


def test_data_calibration_spreads_timesteps_over_the_schedule(tiny_source):
    settings = CalibrationSettings(num_samples=3, steps=4, batch_size=2, values_per_channel=16, quantiles=17)
    images = torch.rand(5, *sample_shape(tiny_source.unet)) * 2 - 1
    record = calibrate_from_data(tiny_source.unet, tiny_source.scheduler_config, images, settings, "fp")
    assert record.meta["diffusion_timesteps"] == [0, 333, 666, 999]
    assert record.meta["inputs"].startswith("data:") and record.inputs.shape[0] == 3 * 4
    dispatched = calibrate(tiny_source.unet, tiny_source.scheduler_config, settings, "fp", images=images)
    assert torch.equal(dispatched.inputs, record.inputs)


@pytest.mark.parametrize("field", ["num_samples", "steps", "batch_size", "values_per_channel"])
def test_settings_refuse_counts_below_one(field):
    with pytest.raises(CalibrationError, match=f"calibration {field.replace('_', ' ')} must be >= 1"):
        CalibrationSettings(**{field: 0})

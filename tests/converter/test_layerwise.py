"""Layer-by-layer matching: fitted on the SNN's own inputs, it beats independent thresholds."""

import torch
from sdm.calibration.collect import calibrate_data_free
from sdm.calibration.settings import CalibrationSettings
from sdm.converter.convert import convert
from sdm.converter.spiking.policy import ConversionPolicy

from tests.conftest import make_tiny_source


def test_layerwise_matching_reduces_error_of_a_tiny_unet():
    source = make_tiny_source()
    settings = CalibrationSettings(num_samples=8, steps=4, values_per_channel=32, quantiles=65)
    record = calibrate_data_free(source.unet, source.scheduler_config, settings, source.describe()["fingerprint"])
    x, t = record.inputs[::3], record.input_timesteps[::3]
    with torch.no_grad():
        reference = source.unet(x, t).sample
        errors = {}
        for layerwise in (False, True):
            snn = convert(source, record, ConversionPolicy(timesteps=4, layerwise=layerwise, matching_inputs=32))
            errors[layerwise] = float((snn(x, t).sample - reference).norm() / reference.norm())
    assert errors[True] < 0.9 * errors[False], errors

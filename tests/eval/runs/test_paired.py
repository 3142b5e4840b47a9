"""Paired measurement: PSNR arithmetic, the ANN/SNN pairing on shared noise, and the fidelity check."""

import math

import numpy as np
import pytest
from sdm.converter.convert import convert
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.errors import SdmError
from sdm.core.settings import SamplingSettings
from sdm.eval.runs.paired import PSNR_CAP_DB, fidelity_check, measure_snn, psnr, sample_ann


def _images(n: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 230, (n, size, size, 3), dtype=np.uint8)


def test_psnr_identical_images_is_infinite() -> None:
    a = _images()
    assert np.all(np.isinf(psnr(a, a.copy())))


@pytest.mark.parametrize("d", [1, 5, 17])
def test_psnr_constant_offset(d: int) -> None:
    a = _images()
    b = a + np.uint8(d)  # values stay below 255, so the offset is exact
    np.testing.assert_allclose(psnr(a, b), 20 * math.log10(255 / d), rtol=1e-12)


def test_psnr_is_per_image() -> None:
    a = _images(2)
    b = a.copy()
    b[1] += 3
    out = psnr(a, b)
    assert out.shape == (2,) and np.isinf(out[0]) and out[1] == pytest.approx(20 * math.log10(85))


def test_psnr_refuses_mismatched_inputs() -> None:
    with pytest.raises(SdmError):
        psnr(_images(2), _images(3))
    with pytest.raises(SdmError):
        psnr(_images().astype(np.float32), _images().astype(np.float32))


SAMPLING = SamplingSettings(num_samples=2, steps=2, seed=0, batch_size=2)


def test_an_snn_paired_with_its_own_ann_noise_is_measured_per_step(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    noise, ann_run = sample_ann(tiny_source, SAMPLING)
    run = measure_snn(snn, tiny_source, noise, ann_run, SAMPLING, "t2")
    assert len(run["paired"]["eps_rel_l2_per_step"]) == SAMPLING.steps
    assert all(0 <= v < PSNR_CAP_DB for v in run["paired"]["psnr_db_per_image"])
    assert 0 < run["spike_rate"]["mean"] < 1 and run["policy"]["timesteps"] == 2
    assert not any(n.monitor for n in snn.neurons().values())  # monitoring switched off again


def test_the_ann_side_is_reproducible_from_the_seed(tiny_source):
    noise, ann_run = sample_ann(tiny_source, SAMPLING)
    again, second = sample_ann(tiny_source, SAMPLING)
    assert (noise == again).all() and (ann_run.samples == second.samples).all()


def test_fidelity_check_reports_what_summary_json_promises(tiny_source, tiny_record, tmp_path):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    result = fidelity_check(snn, tiny_source, SAMPLING, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").is_file()
    assert {"psnr_db", "eps_rel_l2", "eps_cosine", "spike_rate", "seconds_per_unet_eval"} <= set(result)
    assert result["num_samples"] == 2 and result["psnr_db"] > 0

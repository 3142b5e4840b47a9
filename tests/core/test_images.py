"""Sample quantisation to uint8, and the grid / npz writers."""

import numpy as np
import pytest
import torch
from PIL import Image
from sdm.core.errors import SdmError
from sdm.core.images import save_grid_rows, save_npz_images, to_uint8


def _images(n: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 230, (n, size, size, 3), dtype=np.uint8)


def test_to_uint8_maps_range_and_layout() -> None:
    samples = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(2, 3, 1, 5)
    out = to_uint8(samples)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 64, 128, 255, 255]
    np.testing.assert_array_equal(to_uint8(samples.numpy()), out)


def test_to_uint8_refuses_nan() -> None:
    with pytest.raises(SdmError, match="NaN"):
        to_uint8(np.full((1, 3, 2, 2), np.nan))


def test_save_grid_rows_scales_and_labels(tmp_path) -> None:
    ann, snn = _images(4, 32, 1), _images(3, 32, 2)
    plain = save_grid_rows([ann, snn], tmp_path / "plain.png")
    labelled = save_grid_rows([ann, snn], tmp_path / "sub" / "labelled.png", labels=["ANN", "SNN"])
    with Image.open(plain) as image:
        assert image.format == "PNG"
        assert image.size == (2 + 4 * (64 + 2), 2 + 2 * (64 + 2))  # 32 px doubled, 2 px gaps
        grid = np.asarray(image)
    np.testing.assert_array_equal(grid[2:66:2, 2:66:2], ann[0])  # nearest x2 of the first image
    with Image.open(labelled) as image:
        assert image.size[0] > 2 + 4 * 66 and image.size[1] == 2 + 2 * 66


def test_save_grid_rows_refuses_bad_rows(tmp_path) -> None:
    with pytest.raises(SdmError):
        save_grid_rows([_images(2, 8), _images(2, 16)], tmp_path / "x.png")
    with pytest.raises(SdmError):
        save_grid_rows([_images(2, 8)], tmp_path / "x.png", labels=["a", "b"])


def test_save_npz_images_round_trip(tmp_path) -> None:
    images = _images(5)
    path = save_npz_images(tmp_path / "samples.npz", images)
    with np.load(path) as data:
        assert data.files == ["images"]
        np.testing.assert_array_equal(data["images"], images)
    with pytest.raises(SdmError):
        save_npz_images(tmp_path / "bad.npz", images[..., 0])

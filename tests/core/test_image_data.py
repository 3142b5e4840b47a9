"""Reading images from folders and zips: split/limit/resolution and one-line errors."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sdm.core.errors import SdmError
from sdm.core.image_data import ImageSource

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _encoded(color: tuple[int, int, int], size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def tiny_zip(tmp_path) -> Path:
    files = {f"set/train/c{i % 2}/{i:04d}.png": _encoded((10 * i, 0, 0), (8, 8), "PNG")
             for i in range(6)}
    files |= {f"set/test/c0/{i:04d}.jpg": _encoded((0, 200, 0), (8, 8), "JPEG") for i in range(3)}
    files["set/readme.txt"] = b"not an image"
    return _zip(tmp_path / "tiny.zip", files)


def test_zip_split_batches_and_order(tiny_zip) -> None:
    source = ImageSource(tiny_zip, split="train")
    assert len(source) == 6
    batches = list(source.batches(4))
    assert [b.shape for b in batches] == [(4, 8, 8, 3), (2, 8, 8, 3)]
    assert all(b.dtype == np.uint8 for b in batches)
    reds = np.concatenate(batches)[:, 0, 0, 0].tolist()
    assert reds == [0, 20, 40, 10, 30, 50]  # sorted names: c0/0000, c0/0002, ..., c1/0005
    test = ImageSource(tiny_zip, split="test").load()
    assert test.shape == (3, 8, 8, 3) and abs(int(test[0, 0, 0, 1]) - 200) <= 3


def test_limit_is_a_fixed_subset(tiny_zip) -> None:
    first = ImageSource(tiny_zip, limit=4)
    assert len(first) == 4 and first.names == ImageSource(tiny_zip, limit=4).names
    assert len(ImageSource(tiny_zip, limit=100)) == 9


def test_folder_with_resolution(tmp_path) -> None:
    (tmp_path / "faces" / "sub").mkdir(parents=True)
    image = np.zeros((30, 20, 3), np.uint8)
    image[5:25] = 255  # the centered 20x20 square is white, the top/bottom 5 rows black
    Image.fromarray(image).save(tmp_path / "faces" / "a.png")
    Image.fromarray(image).save(tmp_path / "faces" / "sub" / "b.jpeg")
    out = ImageSource(tmp_path / "faces", resolution=10).load()
    assert out.shape == (2, 10, 10, 3)
    assert out[0].min() == 255  # the crop removed the black bands


def test_errors_are_one_line(tmp_path, tiny_zip) -> None:
    bad = [
        (lambda: ImageSource(tmp_path / "missing.zip"), "not found"),
        (lambda: ImageSource(_zip(tmp_path / "empty.zip", {})), "no images"),
        (lambda: ImageSource(tiny_zip, split="val"), "'val'"),
        (lambda: ImageSource(tiny_zip, limit=0), "limit"),
    ]
    (tmp_path / "plain.txt").write_text("hello")
    bad.append((lambda: ImageSource(tmp_path / "plain.txt"), "neither a folder nor"))
    for make, message in bad:
        with pytest.raises(SdmError, match=message) as info:
            make()
        assert "\n" not in str(info.value)


def test_unreadable_and_mixed_sizes(tmp_path) -> None:
    broken = _zip(tmp_path / "broken.zip", {"a.jpg": b"garbage"})
    with pytest.raises(SdmError, match="cannot read image a.jpg"):
        ImageSource(broken).load()
    mixed = _zip(tmp_path / "mixed.zip", {"a.png": _encoded((1, 2, 3), (8, 8), "PNG"),
                                          "b.png": _encoded((1, 2, 3), (9, 8), "PNG")})
    with pytest.raises(SdmError, match="different sizes"):
        ImageSource(mixed).load()
    assert ImageSource(mixed, resolution=8).load().shape == (2, 8, 8, 3)


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.zip").is_file(),
                    reason="../shared/data/cifar10-jpeg.zip absent (shared inputs not mounted)")
def test_shared_cifar10_splits() -> None:
    zip_path = SHARED_DATA / "cifar10-jpeg.zip"
    assert len(ImageSource(zip_path, split="train")) == 50_000
    test = ImageSource(zip_path, split="test", limit=3)
    assert len(test) == 3 and test.load().shape == (3, 32, 32, 3)


@pytest.mark.skipif(not (SHARED_DATA / "celeba-10k-jpeg.zip").is_file(),
                    reason="../shared/data/celeba-10k-jpeg.zip absent (shared inputs not mounted)")
def test_shared_celeba_crop_resize() -> None:
    faces = ImageSource(SHARED_DATA / "celeba-10k-jpeg.zip", limit=2, resolution=64)
    assert len(ImageSource(SHARED_DATA / "celeba-10k-jpeg.zip")) == 10_000
    assert faces.load().shape == (2, 64, 64, 3)

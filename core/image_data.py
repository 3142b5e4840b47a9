"""Image datasets from a folder or a zip archive, as uint8 NHWC batches (training, calibration, FID).

Datasets here ship as zips of JPEGs (``cifar10/train/<class>/NNNN.jpg``); reading them in place
avoids unpacking 60,000 files, and a sorted, seeded selection keeps every run on the same images.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import SdmError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LIMIT_SEED = 0


def _is_image_name(name: str) -> bool:
    """True for image files, skipping hidden files and macOS ``__MACOSX`` zip debris."""
    return (name.lower().endswith(IMAGE_SUFFIXES)
            and not any(p.startswith(".") or p == "__MACOSX" for p in name.split("/")))


def _list_names(path: Path) -> list[str]:
    """All image names (posix, relative to the folder or zip root), sorted."""
    names: Iterable[str]
    if path.is_dir():
        names = (p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise SdmError(f"{path} is neither a folder nor a readable zip archive ({exc})") from None
    else:
        raise SdmError(f"image data not found: {path}")
    return sorted(n for n in names if _is_image_name(n))


@contextmanager
def _reader(path: Path) -> Iterator[Callable[[str], bytes]]:
    """Yield a function that returns the bytes of one named image, keeping a zip open once."""
    if path.is_dir():
        yield lambda name: (path / name).read_bytes()
        return
    with zipfile.ZipFile(path) as archive:
        yield archive.read


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Center-crop to a square, then resize with antialiased bicubic (PIL) to ``resolution``."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.BICUBIC)
    return image


class ImageSource:
    """A fixed, ordered selection of images from a folder or zip.

    ``split`` keeps names with that path component (``train``/``test`` in the CIFAR-10 zip);
    ``limit`` keeps a seeded random subset (so a partial CIFAR split is not one class folder);
    ``resolution`` center-crops and resizes every image to a square of that size.
    """

    def __init__(self, path: str | Path, split: str | None = None, limit: int | None = None,
                 resolution: int | None = None) -> None:
        self.path = Path(path)
        self.split = split
        self.resolution = resolution
        if limit is not None and limit < 1:
            raise SdmError(f"limit must be >= 1, got {limit}")
        if resolution is not None and resolution < 1:
            raise SdmError(f"resolution must be >= 1, got {resolution}")
        names = _list_names(self.path)
        if not names:
            raise SdmError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.path}")
        if split is not None:
            names = [n for n in names if split in n.split("/")[:-1]]
            if not names:
                raise SdmError(f"no images under a '{split}' folder in {self.path}")
        if limit is not None and limit < len(names):
            keep = np.random.default_rng(LIMIT_SEED).choice(len(names), size=limit, replace=False)
            names = [names[i] for i in np.sort(keep)]
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def _decode(self, name: str, read: Callable[[str], bytes]) -> np.ndarray:
        """Read and decode one image to uint8 HWC RGB, resizing it if a resolution was asked for."""
        try:
            with Image.open(io.BytesIO(read(name))) as image:
                image = image.convert("RGB")
        except (OSError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError) as exc:
            raise SdmError(f"cannot read image {name} in {self.path}: {exc}") from None
        if self.resolution is not None:
            image = center_crop_resize(image, self.resolution)
        return np.asarray(image, dtype=np.uint8)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield uint8 N×H×W×3 batches of at most ``batch_size`` images, in order."""
        if batch_size < 1:
            raise SdmError(f"batch size must be >= 1, got {batch_size}")
        shape: tuple[int, ...] | None = None
        with _reader(self.path) as read:
            for start in range(0, len(self.names), batch_size):
                batch = []
                for name in self.names[start:start + batch_size]:
                    image = self._decode(name, read)
                    if shape is None:
                        shape = image.shape
                    elif image.shape != shape:
                        raise SdmError(
                            f"images in {self.path} have different sizes ({shape[1]}x{shape[0]} "
                            f"and {image.shape[1]}x{image.shape[0]} at {name}); pass a resolution")
                    batch.append(image)
                yield np.stack(batch)

    def load(self, batch_size: int = 256) -> np.ndarray:
        """All selected images as one uint8 N×H×W×3 array."""
        return np.concatenate(list(self.batches(batch_size)))

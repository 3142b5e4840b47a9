"""Image I/O every stage shares: model samples to uint8, side-by-side grids, npz sample files.

Training (sample grids), conversion (the fidelity grid) and evaluation use it alike. Everything
works on uint8 NHWC arrays, the one format every consumer (PIL, the FID network, ``.npz`` sample
files) understands, so conversions happen once at the edge.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import SdmError


def check_uint8_nhwc(images: np.ndarray, what: str) -> None:
    """Refuse anything but a uint8 N×H×W×3 array, with a message naming ``what``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise SdmError(f"{what} must be a uint8 numpy array, got {type(images).__name__} "
                       f"{getattr(images, 'dtype', '')}".rstrip())
    if images.ndim != 4 or images.shape[-1] != 3:
        raise SdmError(f"{what} must have shape N×H×W×3, got {images.shape}")


def to_uint8(samples: torch.Tensor | np.ndarray) -> np.ndarray:
    """Map model samples in [-1, 1] (NCHW, torch or numpy) to uint8 NHWC images.

    Uses the diffusers convention ``round((x + 1) * 127.5)`` clipped to [0, 255], so ANN and SNN
    samples are quantised identically before PSNR or FID.
    """
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim != 4:
        raise SdmError(f"samples must be NCHW, got shape {array.shape}")
    if np.isnan(array).any():
        raise SdmError("samples contain NaN; the model diverged")
    pixels = np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def _label_font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font sized to the row height (no font files needed)."""
    return ImageFont.load_default(size=max(10, min(24, height // 3)))


def save_grid_rows(rows: list[np.ndarray], path: str | Path, labels: list[str] | None = None,
                   scale: int | None = None, pad: int = 2) -> Path:
    """Write a PNG with one row per image set (e.g. ANN above SNN) for side-by-side viewing.

    Images are enlarged by nearest-neighbour ``scale`` (default: up to about 64 px, so 32 px
    CIFAR images are doubled) and rows may carry a text label on the left.
    """
    if not rows:
        raise SdmError("save_grid_rows needs at least one row of images")
    for i, row in enumerate(rows):
        check_uint8_nhwc(row, f"grid row {i}")
    size = rows[0].shape[1:3]
    if any(row.shape[1:3] != size for row in rows):
        raise SdmError(f"grid rows must share one image size, got {[r.shape[1:3] for r in rows]}")
    if labels is not None and len(labels) != len(rows):
        raise SdmError(f"got {len(labels)} labels for {len(rows)} grid rows")
    scale = scale if scale is not None else max(1, 64 // size[0])
    if scale < 1:
        raise SdmError(f"grid scale must be >= 1, got {scale}")

    cell_h, cell_w = size[0] * scale, size[1] * scale
    font = _label_font(cell_h) if labels else None
    label_w = 0
    if labels:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_w = max(math.ceil(measure.textlength(text, font=font)) for text in labels) + 2 * pad
    columns = max(len(row) for row in rows)
    width = label_w + pad + columns * (cell_w + pad)
    height = pad + len(rows) * (cell_h + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = pad + r * (cell_h + pad)
        if labels:
            draw.text((pad, top + cell_h // 2), labels[r], fill=(0, 0, 0), font=font, anchor="lm")
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (cell_w + pad), top))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


def save_npz_images(path: str | Path, images: np.ndarray) -> Path:
    """Save a uint8 N×H×W×3 batch under key ``images`` at exactly ``path`` (no suffix added)."""
    check_uint8_nhwc(images, "images")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        np.savez(handle, images=images)
    return out

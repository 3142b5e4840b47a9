"""Converted-model folders: written atomically, read back with validation.

A folder holds `config.json` + `diffusion_pytorch_model.safetensors` (diffusers' own format,
thresholds included), the calibration record, and whatever reports the caller adds. It is
assembled in a temporary sibling folder and renamed into place, so an error never leaves a
half-written output behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError, safe_open

from sdm.calibration.record import CalibrationRecord
from sdm.converter.model import SpikingUNet2DModel
from sdm.core.errors import SdmError
from sdm.pretrained.loading import SourceModel


class ConvertedModelError(SdmError):
    """A folder is not a converted spiking model, or cannot be written."""


class SourceMismatchError(SdmError):
    """A converted model was made from another source model than the ANN it is used with."""


def check_same_source(snn: SpikingUNet2DModel, source: SourceModel, label: str) -> None:
    """Refuse an ANN that is not the SNN's recorded source (by state-dict fingerprint)."""
    recorded = (snn.config.provenance or {}).get("source", {}).get("fingerprint")
    actual = source.describe()["fingerprint"]
    if recorded != actual:
        raise SourceMismatchError(
            f"{label} was converted from another model (fingerprint {recorded}) than the ANN given ({actual})"
        )


def ensure_free_target(target: Path, overwrite: bool = False) -> None:
    """Refuse early (before any long work) to clobber a non-empty folder or a file."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConvertedModelError(f"output path exists and is not a folder: {target}")
    if target.exists() and not overwrite and any(target.iterdir()):
        raise ConvertedModelError(f"output folder exists and is not empty: {target} (pass --overwrite)")


@contextmanager
def atomic_folder(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `target` only if the block finishes."""
    target = Path(target)
    ensure_free_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise ConvertedModelError(f"cannot write output folder {target}: {exc.strerror or exc}") from None
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def save_converted(snn: SpikingUNet2DModel, record: CalibrationRecord | None, folder: Path) -> None:
    """Write the model (config + safetensors) and its calibration record into `folder`."""
    snn.save_pretrained(str(folder), safe_serialization=True)
    if record is not None:
        record.save(folder)


def load_converted(folder: str | Path, device: str = "cpu") -> SpikingUNet2DModel:
    """Rebuild a converted model from its folder alone; refuse anything else by name."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise ConvertedModelError(f"not a converted model folder: {folder} (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvertedModelError(f"unreadable config in {folder}: {exc}") from None
    if config.get("_class_name") != SpikingUNet2DModel.__name__:
        raise ConvertedModelError(f"not a converted model folder: {folder} (config describes {config.get('_class_name')!r})")
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise ConvertedModelError(f"converted model folder {folder} has no diffusion_pytorch_model.safetensors")
    try:
        with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
            stored = set(handle.keys())
        previous = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # mismatched weights are reported below, in one line
        try:
            model = SpikingUNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False)
        finally:
            diffusers_logging.set_verbosity(previous)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ConvertedModelError(f"cannot load converted model from {folder}: {str(exc).splitlines()[0]}") from None
    expected = set(model.state_dict())
    if stored != expected:  # diffusers would fill gaps with random weights: refuse instead
        missing, extra = sorted(expected - stored), sorted(stored - expected)
        raise ConvertedModelError(
            f"weights in {folder} do not match the model its config describes "
            f"(missing {missing[:2]}, unexpected {extra[:2]}); re-run sdm-convert with this version"
        )
    return model.to(device).eval()


"""Converted-model folders: written into a staging folder, read back with validation.

A folder holds `config.json` + `diffusion_pytorch_model.safetensors` (diffusers' own format,
thresholds included), the calibration record, and whatever reports the caller adds. Callers
write it inside `sdm.core.atomic.atomic_folder`, so an error never leaves a half-written output.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError, safe_open

from ..calibration.record import CalibrationRecord
from ..core.errors import SdmError
from ..pretrained.loading import SourceModel
from .spiking.model import SpikingUNet2DModel


class ConvertedModelError(SdmError):
    """A folder is not a converted spiking model, or cannot be written."""


class SourceMismatchError(SdmError):
    """A converted model was made from another source model than the ANN it is used with."""


def check_same_source(snn: SpikingUNet2DModel, source: SourceModel, label: str) -> None:
    """Refuse an ANN that is not the one `snn` was converted from (compared by weight fingerprint):
    every command that pairs an SNN with an ANN (compare, fine-tune, export) checks it here."""
    recorded = (snn.config.provenance or {}).get("source", {}).get("fingerprint")
    actual = source.describe()["fingerprint"]
    if recorded != actual:
        raise SourceMismatchError(
            f"{label} was converted from another model (fingerprint {recorded}) than the ANN given ({actual})"
        )


def save_converted(snn: SpikingUNet2DModel, record: CalibrationRecord | None, folder: Path) -> None:
    """Write the model (config + safetensors) and its calibration record into `folder`."""
    snn.save_pretrained(str(folder), safe_serialization=True)
    if record is not None:
        record.save(folder)


def load_converted(folder: str | Path, device: str = "cpu") -> SpikingUNet2DModel:
    """Rebuild a converted model from its folder alone; refuse anything else by name."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not folder.exists():
        raise ConvertedModelError(f"converted model folder not found: {folder}")
    if not folder.is_dir():
        raise ConvertedModelError(f"not a converted model folder: {folder} is a file")
    if not config_file.is_file():
        raise ConvertedModelError(f"not a converted model folder: {folder} (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConvertedModelError(f"unreadable config in {folder}: {exc}") from None
    if config.get("_class_name") != SpikingUNet2DModel.__name__:
        raise ConvertedModelError(f"not a converted model folder: {folder} (config describes {config.get('_class_name')!r})")
    if "neuron" not in (config.get("policy") or {}):  # made before exact neurons: its neurons would change silently
        raise ConvertedModelError(
            f"{folder} was converted by an earlier version (single-spike neurons, no 'neuron' in its policy): "
            f"re-create it in seconds with `sdm-convert --record {folder} -T {(config.get('policy') or {}).get('timesteps', 4)} "
            f"--out NEW` plus its other options (--neuron single-spike keeps the old neuron)")
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


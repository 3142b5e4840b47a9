"""Load a source ANN from whatever the user points at, chosen by what the path holds.

Accepted: an embedded model name, a diffusers pipeline folder (`unet/` + `scheduler/`), a bare
`UNet2DModel` folder, a `.safetensors` state dict with a JSON config beside it, or an own-layout
DDPM `ckpt.pt`. Checkpoints are untrusted: tensors are read with safetensors or
`torch.load(weights_only=True)`, never by unpickling code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import SdmError
from .own_layout import load_own_layout_checkpoint
from .zoo import DEFAULT_MODEL, available_models, resolve_model_name

# The scheduler used when a checkpoint carries none: the DDPM paper's CIFAR-10 schedule.
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_large",
    "clip_sample": True,
}


class SourceModelError(SdmError):
    """The source model path is missing, corrupt or of a kind we cannot load."""


@dataclass
class SourceModel:
    """A loaded ANN UNet with the scheduler it was trained with and where it came from."""

    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    origin: str
    format: str
    weights: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """The weights' fingerprint, hashed once (a whole state dict: seconds on a large model).

        A source model is read, never trained in place, so the first hash stays true.
        """
        if self._fingerprint is None:
            self._fingerprint = state_dict_fingerprint(self.unet.state_dict())
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance: what was loaded, from where, and a weight fingerprint."""
        return {
            "origin": self.origin,
            "format": self.format,
            "weights": self.weights,
            "fingerprint": self.fingerprint,
            "parameters": sum(p.numel() for p in self.unet.parameters()),
            **self.extra,
        }


def state_dict_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of names, shapes and values: tells whether two models are the same one."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_source_model(checkpoint: str | Path | None = None) -> SourceModel:
    """Load the source ANN named by `checkpoint` (None: the embedded default)."""
    name = DEFAULT_MODEL if checkpoint is None else str(checkpoint)
    path = resolve_model_name(name) or Path(name).expanduser()
    if not path.exists():
        known = ", ".join(available_models())
        raise SourceModelError(f"checkpoint not found: {name} (not a path, nor an embedded model: {known})")
    if path.is_dir():
        source = _load_folder(path)
    elif path.suffix == ".safetensors":
        source = _load_safetensors(path)
    elif path.suffix in {".pt", ".pth", ".ckpt", ".bin"}:
        source = _load_own_layout(path)
    else:
        raise SourceModelError(
            f"unknown checkpoint format: {path} (expected a diffusers folder, .safetensors + config.json, or an own-layout .pt)"
        )
    source.unet.eval().float()
    return source


def _load_folder(path: Path) -> SourceModel:
    if (path / "unet" / "config.json").is_file():
        unet_dir, fmt = path / "unet", "diffusers-pipeline"
    elif (path / "config.json").is_file():
        unet_dir, fmt = path, "diffusers-unet"
    else:
        raise SourceModelError(f"folder holds no diffusers model: {path} (no unet/config.json or config.json)")
    config = _read_json(unet_dir / "config.json")
    if config.get("_class_name") not in (None, "UNet2DModel"):
        raise SourceModelError(f"unsupported model class {config.get('_class_name')!r} in {unet_dir / 'config.json'} (only UNet2DModel)")
    weights = _find_weights(unet_dir)
    unet = _build_unet(config, _read_safetensors(weights), where=str(weights))
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_file) if scheduler_file.is_file() else dict(DEFAULT_SCHEDULER_CONFIG)
    return SourceModel(unet=unet, scheduler_config=scheduler_config, origin=str(path), format=fmt)


def _load_safetensors(path: Path) -> SourceModel:
    config_file = path.with_suffix(".json")
    if not config_file.is_file():
        config_file = path.parent / "config.json"
    if not config_file.is_file():
        raise SourceModelError(f"no config beside {path} (expected {path.with_suffix('.json').name} or config.json)")
    unet = _build_unet(_read_json(config_file), _read_safetensors(path), where=str(path))
    return SourceModel(unet=unet, scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG), origin=str(path), format="safetensors")


def _load_own_layout(path: Path) -> SourceModel:
    unet, info = load_own_layout_checkpoint(path)
    return SourceModel(
        unet=unet,
        scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG),
        origin=str(path),
        format="own-layout",
        weights=info["weights"],
        extra={"own_layout_config": info["config"]},
    )


def _find_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    if (folder / "diffusion_pytorch_model.bin").is_file():
        raise SourceModelError(f"{folder} holds only pickled .bin weights; convert them to safetensors first (we never unpickle checkpoints)")
    raise SourceModelError(f"no safetensors weights in {folder}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceModelError(f"unreadable JSON config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SourceModelError(f"config {path} is not a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SourceModelError(f"corrupt safetensors file {path}: {exc}") from None


def _build_unet(config: dict[str, Any], state_dict: dict[str, torch.Tensor], where: str) -> UNet2DModel:
    """Build a UNet2DModel from its config and load weights strictly, naming any mismatch."""
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        unet = UNet2DModel(**fields)
    except (TypeError, ValueError, KeyError) as exc:
        raise SourceModelError(f"config does not describe a UNet2DModel ({where}): {exc}") from None
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise SourceModelError(f"weights in {where} do not fit the config: {detail}")
    for name, tensor in state_dict.items():
        if tensor.shape != expected[name].shape:
            raise SourceModelError(
                f"weights in {where} do not fit the config: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    unet.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return unet


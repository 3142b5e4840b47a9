"""Named source models shipped with the package, so `--checkpoint NAME` needs no path."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "ddpm-cifar10-ch64"


def available_models() -> list[str]:
    """Names of the embedded models (one folder each under `pretrained/models/`)."""
    return sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir())


def resolve_model_name(name: str) -> Path | None:
    """The folder of an embedded model called `name`, or None when there is none."""
    candidate = MODELS_DIR / name
    return candidate if name in available_models() and candidate.is_dir() else None

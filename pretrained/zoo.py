"""Named source models shipped with the package, so `--checkpoint NAME` needs no path.

The registry is data (`zoo.json`): per model its folder under `pretrained/`, aliases, dataset,
resolution, where it came from and its measured ANN FID with the reference it was measured
against (null until measured: no number is ever filled in by hand without a run behind it).
`sdm-zoo` (cli/source_models.py) prints the list with parameter counts read from each config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRETRAINED_DIR = Path(__file__).resolve().parent
REGISTRY = PRETRAINED_DIR / "zoo.json"
DEFAULT_MODEL = "ddpm-cifar10-ch64"


def registry() -> dict[str, dict[str, Any]]:
    return json.loads(REGISTRY.read_text())


def available_models() -> list[str]:
    """Names of the registered models whose folders are present."""
    return sorted(name for name, entry in registry().items() if (PRETRAINED_DIR / entry["folder"]).is_dir())


def resolve_model_name(name: str) -> Path | None:
    """The folder of the registered model called `name` (or one of its aliases), or None."""
    for model, entry in registry().items():
        if name == model or name in entry.get("aliases", []):
            folder = PRETRAINED_DIR / entry["folder"]
            return folder if folder.is_dir() else None
    return None


def parameter_count(folder: Path) -> int:
    """Parameters of the model's UNet, counted on a meta-device copy built from its config.

    torch and diffusers are imported here, not at the top: every command imports this module for
    DEFAULT_MODEL while parsing, and `--help` must not wait for them.
    """
    import torch
    from diffusers import UNet2DModel

    config_path = folder / "unet" / "config.json" if (folder / "unet").is_dir() else folder / "config.json"
    config = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        return sum(p.numel() for p in UNet2DModel(**config).parameters())


def zoo_table() -> str:
    lines = ["| name | aliases | resolution | parameters | dataset | ANN FID (reference) | source |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in available_models():
        entry = registry()[name]
        fid = (f"{entry['ann_fid']:.2f} ({entry['fid_reference']})" if entry.get("ann_fid") is not None
               else f"— ({entry.get('fid_note', 'not measured')})")
        lines.append(f"| {name} | {', '.join(entry.get('aliases', [])) or '—'} | {entry['resolution']} | "
                     f"{parameter_count(PRETRAINED_DIR / entry['folder']) / 1e6:.2f} M | {entry['dataset']} | {fid} | "
                     f"{entry['source']} |")
    return "\n".join(lines)


"""The calibration record: per-site activation statistics, saved so sweeps never re-run the ANN.

For every site we keep the distribution of the normalised pre-activation z = GroupNorm(h) per
channel as a quantile sketch (Q equally weighted points, exact min and max at the ends), plus
the average per-group GroupNorm statistics of h. Any threshold method (max, percentile,
MSE-optimal for a T-step neuron) and the bias correction are computed from the sketch alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .settings import CalibrationError

RECORD_TENSORS = "calibration.safetensors"
RECORD_META = "calibration.json"
INPUTS_KEY, INPUT_TIMESTEPS_KEY = "inputs/x_t", "inputs/t"


@dataclass
class SiteStats:
    """Statistics of one site: z quantile sketch [C, Q], GroupNorm group stats [G], activation name."""

    z_quantiles: torch.Tensor
    group_mean: torch.Tensor
    group_var: torch.Tensor
    activation: str

    @property
    def channels(self) -> int:
        return self.z_quantiles.shape[0]


@dataclass
class CalibrationRecord:
    """All sites of one source model, with how the statistics were gathered."""

    sites: dict[str, SiteStats]
    meta: dict[str, Any] = field(default_factory=dict)
    inputs: torch.Tensor | None = None  # the x_t the ANN saw, [M, C, H, W], for layer-wise matching
    input_timesteps: torch.Tensor | None = None  # their diffusion timesteps, [M]

    def check_source(self, fingerprint: str) -> None:
        """Refuse a record gathered on a different model than the one being converted."""
        recorded = self.meta.get("source_fingerprint")
        if recorded != fingerprint:
            raise CalibrationError(
                f"calibration record is from another model (fingerprint {recorded}, model has {fingerprint})"
            )

    def require_sites(self, names: list[str]) -> None:
        """Refuse a record that lacks sites a model needs (one made before those sites existed)."""
        missing = [name for name in names if name not in self.sites]
        if missing:
            raise CalibrationError(
                f"calibration record has no statistics for {len(missing)} site(s) this model needs (e.g. {missing[0]}); "
                "it predates them: re-run calibration (sdm-convert without --record)"
            )

    def save(self, folder: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for name, stats in self.sites.items():
            tensors[f"{name}/z_quantiles"] = stats.z_quantiles.contiguous()
            tensors[f"{name}/group_mean"] = stats.group_mean.contiguous()
            tensors[f"{name}/group_var"] = stats.group_var.contiguous()
        if self.inputs is not None:
            tensors[INPUTS_KEY] = self.inputs.contiguous()
            tensors[INPUT_TIMESTEPS_KEY] = self.input_timesteps.contiguous()
        save_file(tensors, str(folder / RECORD_TENSORS))
        meta = {**self.meta, "sites": {name: stats.activation for name, stats in self.sites.items()}}
        (folder / RECORD_META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "CalibrationRecord":
        meta_file, tensor_file = folder / RECORD_META, folder / RECORD_TENSORS
        if not meta_file.is_file() or not tensor_file.is_file():
            raise CalibrationError(f"no calibration record in {folder} (expected {RECORD_META} and {RECORD_TENSORS})")
        try:
            meta = json.loads(meta_file.read_text())
            tensors = load_file(str(tensor_file))
            sites = {
                name: SiteStats(
                    z_quantiles=tensors[f"{name}/z_quantiles"],
                    group_mean=tensors[f"{name}/group_mean"],
                    group_var=tensors[f"{name}/group_var"],
                    activation=activation,
                )
                for name, activation in meta.pop("sites").items()
            }
        except (OSError, ValueError, KeyError, AttributeError, SafetensorError) as exc:
            raise CalibrationError(f"corrupt calibration record in {folder}: {exc}") from None
        return cls(sites=sites, meta=meta, inputs=tensors.get(INPUTS_KEY), input_timesteps=tensors.get(INPUT_TIMESTEPS_KEY))

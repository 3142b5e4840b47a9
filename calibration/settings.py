"""How calibration gathers its statistics: a settings dataclass importable without torch.

`sdm-calibrate` and `sdm-convert` validate these before the ANN loads; the values are saved in
the record's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import SdmError


class CalibrationError(SdmError):
    """Calibration options out of range, or a record that is missing, corrupt or of another model."""


@dataclass(frozen=True)
class CalibrationSettings:
    """How many inputs the statistics come from; all of it is saved in the record."""

    num_samples: int = 8
    steps: int = 10
    seed: int = 0
    batch_size: int = 8
    values_per_channel: int = 64
    quantiles: int = 257

    def __post_init__(self) -> None:
        for name in ("num_samples", "steps", "batch_size", "values_per_channel"):
            if getattr(self, name) < 1:
                raise CalibrationError(f"calibration {name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.quantiles < 2:
            raise CalibrationError(f"calibration quantiles must be >= 2, got {self.quantiles}")

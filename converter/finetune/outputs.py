"""What a fine-tuning run leaves behind: a converted-model folder with the learned values, plus
(TSM models) tsm.json, tsm.png (p[t] per layer against t), loss_log.csv, finetune.json and the final checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from ...calibration.record import CalibrationRecord
from ...core.atomic import atomic_folder
from ...core.training import save_checkpoint, write_loss_log
from ..folder import save_converted
from ..spiking.model import SpikingUNet2DModel
from ..spiking.operations import operations_report
from .settings import FinetuneError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

CHECKPOINT = "checkpoint.pt"
LOSS_COLUMNS = ["step", "loss", "distill_loss", "data_loss", "grad_norm"]


def plot_tsm(values: dict[str, list[float]], path: Path) -> None:
    """p[t] against SNN time step t: one thin line per site (coloured by depth), their mean in black."""
    sites = list(values)
    steps = np.arange(1, len(values[sites[0]]) + 1)
    table = np.array([values[s] for s in sites])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    cmap = plt.get_cmap("viridis")
    for i, row in enumerate(table):
        ax.plot(steps, row, color=cmap(i / max(len(sites) - 1, 1)), linewidth=0.8, alpha=0.6)
    ax.plot(steps, table.mean(axis=0), color="black", linewidth=2.5, marker="o", label="mean over layers")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(sites) - 1))
    fig.colorbar(sm, ax=ax, label="spiking layer (execution order)")
    ax.set_xticks(steps)
    ax.set_xlabel("SNN time step t")
    ax.set_ylabel("TSM factor p[t]")
    ax.set_title("Learned temporal-wise spiking mechanism")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: Path, snn: SpikingUNet2DModel, record: CalibrationRecord | None, summary: dict[str, Any],
                  values: dict[str, list[float]], losses: list[list[float]], final_state: dict[str, Any]) -> None:
    """Replace `out` atomically by the finished run's folder."""
    with atomic_folder(out, overwrite=True) as staging:
        save_converted(snn, record, staging)
        (staging / "operations.json").write_text(json.dumps(operations_report(snn), indent=2))
        if values:  # a TSM model (a QAT model has no p[t])
            (staging / "tsm.json").write_text(json.dumps({"timesteps": snn.timesteps, "mean": summary["tsm_mean_per_step"],
                                                          "sites": values}, indent=2))
            plot_tsm(values, staging / "tsm.png")
        write_loss_log(losses, LOSS_COLUMNS, staging / "loss_log.csv")
        (staging / "finetune.json").write_text(json.dumps(summary, indent=2))
        save_checkpoint(final_state, staging / CHECKPOINT, FinetuneError)

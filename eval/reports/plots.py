"""Plots people would rather look at than read: spike rate per layer, metrics against T or scale."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_spike_rates(rates_by_run: dict[str, dict[str, float]], path: Path) -> None:
    """One bar group per site (execution order), one colour per converted model; a model without a
    site (a lower spiking level) shows no bar there."""
    sites = list(max(rates_by_run.values(), key=len))
    sites += [s for rates in rates_by_run.values() for s in rates if s not in sites]
    fig, ax = plt.subplots(figsize=(max(8, 0.25 * len(sites)), 4))
    width = 0.8 / len(rates_by_run)
    for index, (label, rates) in enumerate(rates_by_run.items()):
        ax.bar([i + index * width for i in range(len(sites))], [rates.get(s, 0.0) for s in sites], width=width,
               label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sites))])
    ax.set_xticklabels([s.replace(".resnets.", ".r").replace("_blocks.", "") for s in sites], rotation=90, fontsize=6)
    ax.set_ylabel("spikes per neuron per step")
    ax.set_title("Firing rate per spiking site")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_metric_curves(x_label: str, xs: list[float], metrics: dict[str, list[float]], path: Path) -> None:
    """One panel per metric against the varied parameter (T or threshold scale)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    axes = axes if len(metrics) > 1 else [axes]
    for ax, (name, values) in zip(axes, metrics.items()):
        ax.plot(xs, values, marker="o")
        ax.set_xlabel(x_label)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(labels: list[str], energy: list[float], quality: list[float], path: Path,
                x_label: str = "energy SNN / float ANN (per UNet evaluation, synaptic events)") -> None:
    """Energy ratio against PSNR, one labelled point per run; the Pareto front (no run both cheaper
    and closer to the ANN) joined by a line."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(energy, quality, zorder=3)
    for label, x, y in zip(labels, energy, quality):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    order = sorted(range(len(energy)), key=lambda i: (energy[i], -quality[i]))
    front, best = [], float("-inf")
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    ax.plot([energy[i] for i in front], [quality[i] for i in front], linestyle="--", color="tab:red", label="Pareto front")
    ax.axvline(1.0, color="grey", linewidth=0.8, label="float ANN energy")
    ax.set_xlabel(x_label)
    ax.set_ylabel("PSNR SNN vs ANN (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

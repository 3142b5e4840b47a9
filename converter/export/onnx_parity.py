"""Parity of an exported spiking UNet with PyTorch, robust to threshold ties.

Two float runtimes disagree in the last bits (different convolution kernels), and a spiking
neuron turns a last-bit difference at its threshold into a whole spike: comparing free-running
outputs then measures where ties happened to fall, not whether the graph is right. So the check
runs PyTorch *pinned* to the exported graph's spikes (each site's output replaced by the one
onnxruntime produced) and asks two things:
- given the same spikes, do the outputs agree (every operator's arithmetic, end to end)?
- is every spike where PyTorch itself would have decided differently a tie: a membrane within
  a small fraction of a threshold from firing?
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..spiking.layers import SpikingActivation

TIE_TOLERANCE = 1e-3  # a disagreeing spike must come from a membrane this close to a firing level (in thresholds)


@torch.no_grad()
def sites_in_call_order(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> list[SpikingActivation]:
    """The spiking sites in the order one call runs them (module order can differ)."""
    called: list[SpikingActivation] = []
    handles = [m.register_forward_hook(lambda site, _i, _o: called.append(site))
               for m in model.modules() if isinstance(m, SpikingActivation)]
    try:
        model(x, t)
    finally:
        for handle in handles:
            handle.remove()
    return called


def _tie_distance(site: SpikingActivation, current: torch.Tensor, forced: torch.Tensor, disagree: torch.Tensor) -> float:
    """Largest distance (in thresholds) from a firing level of the membrane where a neuron first
    decided differently, following the membrane PyTorch computes under the forced spike history.

    Only a neuron's first disagreement must be a tie: the site ran its T steps on its own history
    before being pinned, so after one tie its later spikes may legitimately differ too.
    """
    steps = site.timesteps
    disagree = disagree.unflatten(0, (steps, -1))
    if site.exact:  # counts depend on the cumulative drive alone, not on the spike history
        first = disagree & (disagree.int().cumsum(dim=0) == 1)
        return float(site.decision_distance(current)[first].max())
    drive = site.drive_sequence(current)
    spikes = forced.unflatten(0, (steps, -1))  # sites emit spikes only (bias correction folded downstream)
    theta_pos, theta_neg, fire_pos, fire_neg = site.neuron.firing_levels(drive[0])
    v = torch.zeros_like(drive[0])
    seen = torch.zeros_like(disagree[0])
    worst = 0.0
    for step in range(steps):
        v = v + drive[step]
        first = disagree[step] & ~seen
        if first.any():
            distance = (v - fire_pos).abs() / theta_pos
            if site.neuron.signed:
                distance = torch.minimum(distance, (v - fire_neg).abs() / theta_neg)
            worst = max(worst, float(distance[first].max()))
        seen |= disagree[step]
        v = v - spikes[step]
    return worst


@torch.no_grad()
def pinned_run(model: nn.Module, x: torch.Tensor, t: torch.Tensor, forced: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """PyTorch's prediction with every site's output replaced by `forced` (execution order), and
    how many of its own spikes disagreed with the forced ones and how close to ties they were."""
    sites = sites_in_call_order(model, x, t)
    if len(forced) != len(sites):
        raise ValueError(f"{len(forced)} spike outputs for {len(sites)} spiking site calls")
    stats = {"neuron_steps": 0, "disagreeing_spikes": 0, "worst_tie_distance": 0.0}
    calls = iter(forced)

    def pin(site: SpikingActivation, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        target = torch.from_numpy(next(calls)).to(output)
        # A different decision moves the output by a whole threshold; last-bit differences in the
        # spike values (another runtime adding the bias current) are left to the output check.
        theta_pos, theta_neg = site.neuron.thresholds(output)
        disagree = (output - target).abs() > 0.5 * torch.minimum(theta_pos, theta_neg)
        stats["neuron_steps"] += output.numel()
        if disagree.any():
            stats["disagreeing_spikes"] += int(disagree.sum())
            stats["worst_tie_distance"] = max(stats["worst_tie_distance"], _tie_distance(site, inputs[0], target, disagree))
        return target

    handles = [site.register_forward_hook(pin) for site in set(sites)]
    try:
        prediction = model(x, t).sample.numpy()
    finally:
        for handle in handles:
            handle.remove()
    return prediction, stats

"""Temporal-wise spiking mechanism (TSM): the per-step factors p[t] of every spiking site.

TSM (Cao et al., "Spiking Diffusion Models", IEEE TAI 2024) gives every spiking site a learnable
factor p[t] per SNN time step: the neuron's input drive at step t is multiplied by p[t]
(`SpikingActivation.forward`). `enable_tsm` creates the factors at 1.0, which leaves every output
exactly as it was; `sdm-finetune` (converter/finetune/) then learns them.

Saving: p is per *time step*, so it cannot be folded into the (time-shared) weights or
thresholds of a plain export; a TSM model keeps p as a parameter `<site>.tsm` [T] in its state
dict and records `"tsm": true` in its config, so that `SpikingUNet2DModel.__init__` re-creates
the parameters before the weights load. `save_converted` / `load_converted` round-trip it bit for
bit; a folder without the flag is a plain model.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import SpikingActivation


def spiking_sites(snn: nn.Module) -> dict[str, SpikingActivation]:
    """The spiking sites of a converted model by site name, in execution order."""
    return {m.site: m for m in snn.modules() if isinstance(m, SpikingActivation)}


def has_tsm(snn: nn.Module) -> bool:
    sites = spiking_sites(snn)
    return bool(sites) and all(site.tsm is not None for site in sites.values())


def enable_tsm(snn: nn.Module) -> None:
    """Give every spiking site p = ones(T) (outputs unchanged); keeps factors already there."""
    for site in spiking_sites(snn).values():
        if site.tsm is None:
            like = site.output_shift
            site.tsm = nn.Parameter(torch.ones(site.timesteps, device=like.device, dtype=like.dtype))
    snn.register_to_config(tsm=True)


def tsm_values(snn: nn.Module) -> dict[str, list[float]]:
    """Learned p[t] per site (execution order); {} for a model without TSM."""
    return {name: site.tsm.detach().float().cpu().tolist() for name, site in spiking_sites(snn).items() if site.tsm is not None}

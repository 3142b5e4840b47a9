"""Where a diffusers UNet's activations become spikes in the SNN: the spiking sites.

Two families, both named the way the calibration record and the converted SNN name them:
- activation sites: a GroupNorm followed by a nonlinearity, named by the GroupNorm's path
  (`down_blocks.0.resnets.1.norm2`, `conv_norm_out`). UNet2DModel applies `act_fn` inside ResNet
  blocks but always SiLU before `conv_out`, so the activation is read from the module;
- stream sites (activation "identity"): an analog value of the residual stream where it feeds a
  convolution or projection (shortcut, down- and up-sampling convolutions, attention's q/k/v
  projections), named by the consuming module's path plus `.input`
  (`down_blocks.0.downsamplers.0.conv.input`); and inside attention, the projections' outputs
  q, k, v (`.to_q.output`, ...) and the attention output feeding `to_out` (`.to_out.0.input`), so
  that attention's products and its output projection see spikes too.
Calibration records every family, so one record serves every spiking level of the converter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.models.activations import ACT2CLS, get_activation
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from ..core.errors import SdmError

IDENTITY = "identity"
PROBABILITIES = "probabilities"  # what an attention-probability site observes: attention_probabilities()


OUTPUT_SITE = "conv_norm_out"  # the UNet's last GroupNorm, before conv_act and conv_out
RESNET_SITE_NORMS = ("norm1", "norm2")  # a ResNet block's two GroupNorm + activation pairs


def site_name(block_path: str, norm: str) -> str:
    """The one naming rule: a site is the path of its GroupNorm (`down_blocks.0.resnets.1.norm2`)."""
    return f"{block_path}.{norm}" if block_path else norm


@dataclass(frozen=True)
class Site:
    """A place to observe: `module`'s output (a GroupNorm's, or a projection's) or its input.

    `channel_dim` is where the site's channels are in what is observed (1 for feature maps, -1 for
    attention tokens [B, N, C]).
    """

    module: nn.Module
    activation: str
    observes: str = "output"
    channel_dim: int = 1

    @property
    def norm(self) -> nn.GroupNorm:
        """The GroupNorm of an activation site (its per-group statistics are recorded too)."""
        return self.module


def activation_name(module: nn.Module, where: str) -> str:
    """The diffusers name of an activation module (silu, relu, gelu, mish)."""
    for name, cls in ACT2CLS.items():
        if type(module) is cls and name != "swish":
            return name
    raise SdmError(f"unsupported activation {type(module).__name__} at {where}")


def activation_function(name: str) -> nn.Module:
    """The activation module for a recorded name; "identity" is the stream sites' and the input encoder's."""
    return nn.Identity() if name == IDENTITY else get_activation(name)


def activation_sites(unet: UNet2DModel) -> dict[str, Site]:
    """GroupNorm modules whose output goes through an activation, in execution order."""
    sites: dict[str, Site] = {}
    for path, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            act = activation_name(module.nonlinearity, path)
            for norm in RESNET_SITE_NORMS:
                sites[site_name(path, norm)] = Site(getattr(module, norm), act)
    if isinstance(getattr(unet, OUTPUT_SITE, None), nn.GroupNorm):
        sites[OUTPUT_SITE] = Site(unet.conv_norm_out, activation_name(unet.conv_act, "conv_act"))
    return sites


def shortcut_site_name(block_path: str) -> str:
    return f"{block_path}.conv_shortcut.input"


def resampler_site_name(path: str) -> str:
    return f"{path}.conv.input"


def attention_input_site_name(path: str) -> str:
    """One site feeds to_q, to_k and to_v (they read the same GroupNorm output); named by to_q."""
    return f"{path}.to_q.input"


def attention_product_site_names(path: str) -> dict[str, str]:
    """Sites of the 'full' level inside attention: q, k, v after their projections, the softmax
    probabilities P, and to_out's input."""
    return {"q": f"{path}.to_q.output", "k": f"{path}.to_k.output", "v": f"{path}.to_v.output",
            "p": f"{path}.attention_probs", "out": f"{path}.to_out.0.input"}


def attention_probabilities(attention: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
    """softmax(scale q k^T) [B, heads, N, N] of a spatial self-attention block for its input
    [B, C, H, W], as diffusers' AttnProcessor2_0 computes it inside scaled_dot_product_attention
    (where no module exposes it). Functional calls with the block's parameters, so the hooks
    observing its GroupNorm and projections do not see these extra evaluations."""
    tokens = hidden_states.flatten(2)
    norm = attention.group_norm
    if norm is not None:
        tokens = F.group_norm(tokens, norm.num_groups, norm.weight, norm.bias, norm.eps)
    tokens = tokens.transpose(1, 2)
    q, k = (F.linear(tokens, layer.weight, layer.bias).unflatten(2, (attention.heads, -1)).transpose(1, 2)
            for layer in (attention.to_q, attention.to_k))
    return torch.softmax(q @ k.transpose(-1, -2) * attention.scale, dim=-1)


def stream_sites(unet: UNet2DModel) -> dict[str, Site]:
    """Residual-stream sites: the analog inputs of shortcut / down / up convolutions and of q/k/v.

    A resampler's site observes the resampler's input (before Downsample2D's zero padding and
    before Upsample2D's nearest up-sampling, which copies values and so keeps their distribution).
    """
    sites: dict[str, Site] = {}
    for path, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D) and module.conv_shortcut is not None:
            sites[shortcut_site_name(path)] = Site(module.conv_shortcut, IDENTITY, "input")
        elif isinstance(module, (Downsample2D, Upsample2D)) and isinstance(getattr(module, "conv", None), nn.Conv2d):
            sites[resampler_site_name(path)] = Site(module, IDENTITY, "input")
        elif isinstance(module, Attention):
            sites[attention_input_site_name(path)] = Site(module.to_q, IDENTITY, "input", channel_dim=-1)
            names = attention_product_site_names(path)
            for key, projection in (("q", module.to_q), ("k", module.to_k), ("v", module.to_v)):
                sites[names[key]] = Site(projection, IDENTITY, "output", channel_dim=-1)
            sites[names["p"]] = Site(module, IDENTITY, PROBABILITIES)
            sites[names["out"]] = Site(module.to_out[0], IDENTITY, "input", channel_dim=-1)
    return sites


def all_sites(unet: UNet2DModel) -> dict[str, Site]:
    """Every site a calibration record holds (activation sites, then stream sites)."""
    return {**activation_sites(unet), **stream_sites(unet)}

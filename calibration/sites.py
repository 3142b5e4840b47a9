"""Where a diffusers UNet has a normalisation followed by a nonlinearity: the spiking sites.

A site is named by the path of its GroupNorm module in the ANN (`down_blocks.0.resnets.1.norm2`,
`conv_norm_out`); the calibration record and the converted SNN use the same names. Each site
also names its activation: UNet2DModel applies `act_fn` inside ResNet blocks but always SiLU
before `conv_out`, so the activation is read from the module, not from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DModel
from diffusers.models.activations import ACT2CLS, get_activation
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from sdm.core.errors import SdmError


OUTPUT_SITE = "conv_norm_out"  # the UNet's last GroupNorm, before conv_act and conv_out
RESNET_SITE_NORMS = ("norm1", "norm2")  # a ResNet block's two GroupNorm + activation pairs


def site_name(block_path: str, norm: str) -> str:
    """The one naming rule: a site is the path of its GroupNorm (`down_blocks.0.resnets.1.norm2`)."""
    return f"{block_path}.{norm}" if block_path else norm


@dataclass(frozen=True)
class Site:
    norm: nn.GroupNorm
    activation: str


def activation_name(module: nn.Module, where: str) -> str:
    """The diffusers name of an activation module (silu, relu, gelu, mish)."""
    for name, cls in ACT2CLS.items():
        if type(module) is cls and name != "swish":
            return name
    raise SdmError(f"unsupported activation {type(module).__name__} at {where}")


def activation_function(name: str) -> nn.Module:
    """The activation module for a recorded name; "identity" is the input encoder's."""
    return nn.Identity() if name == "identity" else get_activation(name)


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

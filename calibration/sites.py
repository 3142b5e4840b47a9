"""Where a diffusers UNet has a normalisation followed by a nonlinearity: the spiking sites.

A site is named by the path of its GroupNorm module in the ANN (`down_blocks.0.resnets.1.norm2`,
`conv_norm_out`); the calibration record and the converted SNN use the same names.
"""

from __future__ import annotations

from torch import nn
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D


def activation_sites(unet: UNet2DModel) -> dict[str, nn.GroupNorm]:
    """GroupNorm modules whose output goes through the UNet's activation, in execution order."""
    sites: dict[str, nn.GroupNorm] = {}
    for path, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            sites[f"{path}.norm1"] = module.norm1
            sites[f"{path}.norm2"] = module.norm2
    if isinstance(getattr(unet, "conv_norm_out", None), nn.GroupNorm):
        sites["conv_norm_out"] = unet.conv_norm_out
    return sites

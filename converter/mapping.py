"""Walk a diffusers UNet's module tree and swap each module for its spiking counterpart.

torch.fx cannot trace diffusers UNets (timestep embedding, asserts, branches), so conversion
goes by module type through a mapping table. A module type not in the table is refused with its
name and its path in the model, never silently left analog.
"""

from __future__ import annotations

from typing import Callable

from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.unets.unet_2d_blocks import (
    AttnDownBlock2D,
    AttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2D,
    UpBlock2D,
)
from torch import nn

from sdm.calibration.sites import OUTPUT_SITE, RESNET_SITE_NORMS, site_name
from sdm.converter.layers import (
    ConstantOverTime,
    FrozenGroupNorm,
    SpikingActivation,
    SpikingAttention,
    SpikingResnetBlock2D,
)
from sdm.converter.policy import ConversionPolicy
from sdm.core.errors import SdmError


class UnsupportedModuleError(SdmError):
    """The source model contains a module the converter has no spiking mapping for."""


# Containers: their own forward only routes tensors between children, so recurse into them.
CONTAINERS: tuple[type[nn.Module], ...] = (
    nn.ModuleList,
    DownBlock2D,
    AttnDownBlock2D,
    UpBlock2D,
    AttnUpBlock2D,
    UNetMidBlock2D,
)
# Kept as they are: linear maps, and the timestep embedding (constant over SNN time: analog, once).
KEPT: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.Dropout,
    nn.Identity,
    Downsample2D,
    Upsample2D,
    Timesteps,
    TimestepEmbedding,
    GaussianFourierProjection,
)


def _site(path: str, norm: nn.Module, activation: nn.Module, policy: ConversionPolicy) -> SpikingActivation:
    if not isinstance(norm, nn.GroupNorm):
        raise UnsupportedModuleError(f"unsupported normalisation {type(norm).__name__} at {path} (only GroupNorm)")
    return SpikingActivation(
        site=path,
        norm=FrozenGroupNorm(norm) if policy.norm == "frozen" else norm,
        activation=activation,
        channels=norm.num_channels,
        timesteps=policy.timesteps,
        signed=policy.negative_lobe == "signed",
        membrane_init=policy.membrane_init,
        neuron=policy.neuron,
        max_payload=policy.max_payload,
    )


INPUT_SITE = "conv_in.input"


def _encode_input(conv_in: nn.Conv2d, policy: ConversionPolicy) -> nn.Sequential:
    """Drive conv_in with signed spikes encoding the image instead of the analog image itself."""
    encoder = SpikingActivation(site=INPUT_SITE, norm=nn.Identity(), activation=nn.Identity(),
                                channels=conv_in.in_channels, timesteps=policy.timesteps, signed=True,
                                membrane_init=policy.membrane_init, neuron=policy.neuron,
                                max_payload=policy.max_payload)
    return nn.Sequential(encoder, conv_in)


def _convert_resnet(block: ResnetBlock2D, path: str, policy: ConversionPolicy) -> nn.Module:
    if block.upsample is not None or block.downsample is not None:
        raise UnsupportedModuleError(f"unsupported ResnetBlock2D with up/down sampling at {path}")
    if block.time_embedding_norm != "default":
        raise UnsupportedModuleError(
            f"unsupported ResnetBlock2D time_embedding_norm={block.time_embedding_norm!r} at {path}"
        )
    site1, site2 = (_site(site_name(path, norm), getattr(block, norm), block.nonlinearity, policy)
                    for norm in RESNET_SITE_NORMS)
    return SpikingResnetBlock2D(block, site1, site2)


def _convert_attention(attention: Attention, path: str, policy: ConversionPolicy) -> nn.Module:
    unsupported = {
        "spatial norm": attention.spatial_norm is not None,
        "cross-attention": attention.is_cross_attention,
        "q/k normalisation": attention.norm_q is not None or attention.norm_k is not None,
        "custom scale": abs(attention.scale - attention.inner_dim ** -0.5 * attention.heads ** 0.5) > 1e-12
        if attention.scale_qk else True,
        "added key/value projections": getattr(attention, "add_k_proj", None) is not None,
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise UnsupportedModuleError(f"unsupported Attention variant ({', '.join(found)}) at {path}")
    return SpikingAttention(attention, policy.timesteps, policy.attention)


CONVERSIONS: dict[type[nn.Module], Callable[[nn.Module, str, ConversionPolicy], nn.Module]] = {
    ResnetBlock2D: _convert_resnet,
    Attention: _convert_attention,
}


def _convert_children(module: nn.Module, prefix: str, policy: ConversionPolicy, done: frozenset[str] = frozenset()) -> None:
    for name, child in list(module.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if path in done:
            continue
        convert = CONVERSIONS.get(type(child))
        if convert is not None:
            setattr(module, name, convert(child, path, policy))
        elif isinstance(child, CONTAINERS):
            _convert_children(child, path, policy)
        elif not isinstance(child, KEPT):
            raise UnsupportedModuleError(f"unsupported module {type(child).__name__} at {path}: no spiking mapping")


def convert_unet_modules(unet: UNet2DModel, policy: ConversionPolicy) -> UNet2DModel:
    """Convert `unet` in place (pass a copy to keep the ANN) and return it."""
    config = unet.config
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise UnsupportedModuleError("unsupported class-conditional UNet2DModel (class_embedding)")
    if unet.conv_norm_out is None:
        raise UnsupportedModuleError("unsupported UNet2DModel without conv_norm_out")
    unet.conv_norm_out = _site(OUTPUT_SITE, unet.conv_norm_out, unet.conv_act, policy)
    unet.conv_act = nn.Identity()
    if policy.input_encoding == "spikes":
        unet.conv_in = _encode_input(unet.conv_in, policy)
    else:
        unet.conv_in = ConstantOverTime(unet.conv_in, policy.timesteps)
    unet.time_embedding = ConstantOverTime(unet.time_embedding, policy.timesteps)
    _convert_children(unet, "", policy, done=frozenset({"conv_norm_out", "conv_act", "conv_in", "time_embedding"}))
    return unet


"""NIR export, or an explicit refusal that names every node NIR cannot express.

NIR (the Neuromorphic Intermediate Representation, `nir` package) has nodes for IF/LIF neurons
with one positive threshold, convolutions, affine maps, pooling and flatten. A converted
diffusion UNet also needs operations NIR has no node for; approximating them silently would
misrepresent the model, so each is listed by kind and module path and the export is refused.
Nothing is written in that case.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from diffusers.models.resnet import Upsample2D
from torch import nn

from ..spiking.layers import ConstantOverTime, SpikingActivation, SpikingAttention
from ..spiking.model import SpikingUNet2DModel
from .onnx_export import ExportError

# Why each kind cannot be a NIR node (nir 1.0).
BLOCKERS = {
    "signed IF neuron": "NIR's IF has a single positive threshold; these neurons also fire -1 spikes",
    "expectation-compensated dendrite": "NIR neurons integrate their input linearly; these apply GroupNorm and the "
                                        "activation to the running mean of it",
    "GroupNorm": "no normalisation node in NIR",
    "softmax attention": "no attention or softmax node in NIR",
    "nearest upsampling": "no upsampling node in NIR",
    "skip concatenation": "NIR sums a node's inputs; the UNet concatenates skip connections along channels",
    "timestep embedding": "sinusoidal embedding and its MLP have no NIR equivalent",
}


def nir_blockers(snn: SpikingUNet2DModel) -> dict[str, list[str]]:
    """Module paths (relative to the UNet) that block a NIR export, by kind."""
    found: dict[str, list[str]] = {kind: [] for kind in BLOCKERS}
    for path, module in snn.unet.named_modules():
        if isinstance(module, SpikingActivation):
            if module.neuron.signed:
                found["signed IF neuron"].append(path)
            if not isinstance(module.norm, nn.Identity) or not isinstance(module.activation, nn.Identity):
                found["expectation-compensated dendrite"].append(path)
        elif isinstance(module, nn.GroupNorm):
            found["GroupNorm"].append(path)
        elif isinstance(module, SpikingAttention):
            found["softmax attention"].append(path)
        elif isinstance(module, Upsample2D):
            found["nearest upsampling"].append(path)
        elif isinstance(module, ConstantOverTime) and path == "time_embedding":
            found["timestep embedding"].append(path)
    found["skip concatenation"] = [f"up_blocks.{i}" for i, _ in enumerate(snn.unet.up_blocks)]
    return {kind: paths for kind, paths in found.items() if paths}


def export_nir(snn: SpikingUNet2DModel, path: str | Path) -> NoReturn:
    """Refuse, naming every kind of node NIR cannot express (every UNet has at least its skip
    concatenations), with how many there are and where the first one is."""
    blockers = nir_blockers(snn)
    summary = "; ".join(f"{kind} x{len(paths)} (e.g. {paths[0]}): {BLOCKERS[kind]}" for kind, paths in blockers.items())
    raise ExportError(f"NIR cannot express this model, nothing written to {path}: {summary}")

"""Which operations of a converted UNet are spiking and which stay analog, said explicitly.

Energy claims are only honest if every analog operation is counted. Each Conv2d/Linear of the
spiking UNet gets one of three kinds:
- "spike-driven": its input is spikes, so each input event costs accumulates (ACs), no MACs;
- "analog-per-step": its input is an analog current that changes with SNN time (the residual
  stream into shortcut / down- / up-sampling convolutions, attention projections): T x MACs;
- "analog-once": its input is constant over SNN time (the image into conv_in, the timestep
  embedding MLP and projections): its MACs are spent once per UNet call.
Sites (GroupNorm + activation in a neuron's dendrite) and softmax attention are analog too.
"""

from __future__ import annotations

from torch import nn

from sdm.converter.layers import SpikingAttention, SpikingResnetBlock2D
from sdm.calibration.sites import OUTPUT_SITE
from sdm.converter.mapping import INPUT_SITE
from sdm.converter.model import SpikingUNet2DModel

SPIKE_DRIVEN, ANALOG_PER_STEP, ANALOG_ONCE = "spike-driven", "analog-per-step", "analog-once"


def classify_layers(snn: SpikingUNet2DModel) -> dict[str, tuple[str, str | None]]:
    """Map each Conv2d/Linear path (relative to `snn.unet`) to (kind, feeding site or None)."""
    kinds: dict[str, tuple[str, str | None]] = {"conv_out": (SPIKE_DRIVEN, OUTPUT_SITE)}
    unet = snn.unet
    for path, module in unet.named_modules():
        if isinstance(module, SpikingResnetBlock2D):
            kinds[f"{path}.conv1"] = (SPIKE_DRIVEN, module.site1.site)
            kinds[f"{path}.conv2"] = (SPIKE_DRIVEN, module.site2.site)
    if isinstance(unet.conv_in, nn.Sequential):
        kinds["conv_in.1"] = (SPIKE_DRIVEN, INPUT_SITE)
    for path, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or path in kinds:
            continue
        constant = path.startswith(("conv_in", "time_embedding")) or path.endswith("time_emb_proj")
        kinds[path] = (ANALOG_ONCE, None) if constant else (ANALOG_PER_STEP, None)
    return kinds


def operations_report(snn: SpikingUNet2DModel) -> dict:
    """A JSON-ready statement of what spikes and what stays analog in this model."""
    kinds = classify_layers(snn)
    sites = snn.sites()
    attentions = [p for p, m in snn.unet.named_modules() if isinstance(m, SpikingAttention)]
    grouped: dict[str, list[str]] = {SPIKE_DRIVEN: [], ANALOG_PER_STEP: [], ANALOG_ONCE: []}
    for path, (kind, _) in kinds.items():
        grouped[kind].append(path)
    policy = snn.policy
    return {
        "timesteps": policy.timesteps,
        "spiking_neurons": {
            "sites": len(sites),
            "kind": "signed IF (+1/-1 spikes), soft reset" if policy.negative_lobe == "signed" else "IF, soft reset",
            "membrane_init_fraction_of_threshold": policy.membrane_init,
        },
        "layers": {kind: sorted(paths) for kind, paths in grouped.items()},
        "analog_elementwise": {
            "group_norm_in_dendrite": f"{len(sites)} sites, " + (
                "on the running mean, every step" if policy.norm == "running" else "frozen affine, every step"
            ),
            "activation_in_dendrite": f"{len(sites)} sites" if policy.negative_lobe == "signed" else "none (IF rectifies)",
            "bias_correction_currents": policy.bias_correction,
            "softmax_attention": f"{len(attentions)} blocks, " + (
                "on the running mean, every step" if policy.attention == "running" else "per step"
            ),
        },
        "input_encoding": "signed spikes from IF neurons encoding x; conv_in is spike-driven"
        if policy.input_encoding == "spikes" else "analog current: conv_in(x) is computed once and injected every step",
        "output_decoding": "time average of conv_out's currents over the T steps",
    }


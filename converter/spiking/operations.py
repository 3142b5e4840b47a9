"""Which operations of a converted UNet are spiking and which stay analog, said explicitly.

Energy claims are only honest if every analog operation is counted. Each Conv2d/Linear of the
spiking UNet gets one of three kinds:
- "spike-driven": its input is a site's spikes (the site's bias correction folded into its bias),
  so each input spike costs accumulates, no MACs;
- "analog-per-step": its input is an analog current that changes with SNN time (at the hybrid
  level the residual stream into shortcut / down- / up-sampling convolutions and attention's
  projections; at the residual level attention's output projection): T x MACs;
- "analog-once": its input is constant over SNN time (the image into conv_in, the timestep
  embedding MLP and projections): its MACs are spent once per UNet call.
Sites (GroupNorm + activation in a neuron's dendrite) and softmax attention are analog too.
"""

from __future__ import annotations

from torch import nn

from .layers import SpikingAttention
from .model import SpikingUNet2DModel
from .residual import SpikeDrivenAttention, feeding_site

SPIKE_DRIVEN, ANALOG_PER_STEP, ANALOG_ONCE = "spike-driven", "analog-per-step", "analog-once"


def classify_layers(snn: SpikingUNet2DModel) -> dict[str, tuple[str, str | None]]:
    """Map each Conv2d/Linear path (relative to `snn.unet`) to (kind, feeding site or None)."""
    kinds: dict[str, tuple[str, str | None]] = {}
    for path, module in snn.unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        site = feeding_site(module)
        if site is not None:
            kinds[path] = (SPIKE_DRIVEN, site.site)
        elif path.startswith(("conv_in", "time_embedding")) or path.endswith("time_emb_proj"):
            kinds[path] = (ANALOG_ONCE, None)
        else:
            kinds[path] = (ANALOG_PER_STEP, None)
    return kinds


def layer_kind(path: str) -> str:
    """The row of the energy breakdown a Conv2d/Linear belongs to, from its path."""
    name = path.rsplit(".", 1)[-1]
    if path.startswith("conv_in"):
        return "conv_in"
    if path.startswith("time_embedding") or name == "time_emb_proj":
        return "timestep MLP + projections"
    if "conv_shortcut" in path:
        return "shortcut convs"
    if "downsamplers" in path:
        return "down-sampling convs"
    if "upsamplers" in path:
        return "up-sampling convs"
    if ".attentions." in path:
        return "attention projections"
    if path == "conv_out":
        return "conv_out"
    return "ResNet convs"


ANALOG_WHY = {
    "conv_in": "its input is the image, constant over SNN time: computed once per UNet call",
    "timestep MLP + projections": "the timestep embedding is constant over SNN time: computed once per UNet call",
    "shortcut convs": "fed by the analog residual stream (spiking level 'hybrid'; 'residual' makes it spike-driven)",
    "down-sampling convs": "fed by the analog residual stream (spiking level 'hybrid'; 'residual' makes it spike-driven)",
    "up-sampling convs": "fed by the analog residual stream (spiking level 'hybrid'; 'residual' makes it spike-driven)",
    "attention projections": "fed by the analog attention input (q/k/v at 'hybrid') or the analog attention output "
                             "(to_out below 'full')",
}


def operations_report(snn: SpikingUNet2DModel) -> dict:
    """A JSON-ready statement of what spikes and what stays analog in this model, and why."""
    kinds = classify_layers(snn)
    sites = snn.sites()
    attentions = {p: m for p, m in snn.unet.named_modules() if isinstance(m, (SpikingAttention, SpikeDrivenAttention))}
    grouped: dict[str, list[str]] = {SPIKE_DRIVEN: [], ANALOG_PER_STEP: [], ANALOG_ONCE: []}
    analog_why: dict[str, str] = {}
    for path, (kind, _) in kinds.items():
        grouped[kind].append(path)
        if kind != SPIKE_DRIVEN:
            analog_why[path] = ANALOG_WHY.get(layer_kind(path), "analog input")
    policy = snn.policy
    full = [p for p, m in attentions.items() if isinstance(m, SpikeDrivenAttention) and m.level == "full"]
    products = (
        "Q K^T and softmax V as products of spike trains (accumulates), softmax on the running mean (analog "
        "elementwise), (P_t - P_(t-1)) S_(t-1) as float MACs" if full else
        "softmax attention on the running means of its (projected) inputs, analog matrix products every step"
    )
    return {
        "timesteps": policy.timesteps,
        "spiking_level": policy.spiking,
        "spiking_neurons": {
            "sites": len(sites),
            "kind": "signed IF (+1/-1 spikes), soft reset" if policy.negative_lobe == "signed" else "IF, soft reset",
            "membrane_init_fraction_of_threshold": policy.membrane_init,
            "bias_correction": "folded into the consuming layer's bias (borders of padded convolutions exact); in "
                               "full attention b_k drops out of softmax, b_q is a per-key score bias, b_v an output "
                               "current" if policy.bias_correction else "off",
        },
        "layers": {kind: sorted(paths) for kind, paths in grouped.items()},
        "analog_layers_why": analog_why,
        "analog_elementwise": {
            "group_norm_in_dendrite": f"{len(sites)} sites, " + (
                "on the running mean, every step" if policy.norm == "running" else "frozen affine, every step"
            ) + " (identity for the residual-stream sites)",
            "activation_in_dendrite": "SiLU sites" if policy.negative_lobe == "signed" else "none (IF rectifies)",
            "attention": f"{len(attentions)} blocks; GroupNorm on the running mean every step; " + products,
            "residual_adds": "every step: the stream itself is a sum of currents",
            "why": "normalisation, softmax and SiLU are not linear in spikes; they run on running means "
                   "(expectation compensation), as elementwise analog work",
        },
        "input_encoding": "signed spikes from IF neurons encoding x; conv_in is spike-driven"
        if policy.input_encoding == "spikes" else "analog current: conv_in(x) is computed once and injected every step",
        "output_decoding": "time average of conv_out's currents over the T steps",
    }

"""Energy per image and UNet evaluation, counted from what runs, against a float and a quantised ANN.

Unit costs: 45 nm figures of Horowitz (ISSCC 2014, "Computing's energy problem"): 32-bit float
mult 3.7 pJ, add 0.9 pJ (a float MAC 4.6 pJ, an accumulate 0.9 pJ: the SDM papers' convention);
8-bit int mult 0.2 pJ, add 0.03 pJ; 32-bit int mult 3.1 pJ, add 0.1 pJ. Other integer widths
scale as the hardware does: a multiplier's energy with the product of its operand widths
(0.2 pJ x a*b/64, which gives 3.2 pJ at 32x32 against the measured 3.1), an adder's linearly
with its width (0.03 pJ x bits/8, 0.12 pJ at 32 bits against 0.1, so slightly pessimistic).

Synaptic work:
- ANN: every Conv2d/Linear MAC and attention's two matrix products (2 N^2 C per block);
- quantised ANN (the SNN's twin): the same UNet with each site's output quantised to
  ceil(log2(levels)) bits (2T+1 levels for signed neurons, T+1 for plain IF), 8-bit weights and
  32-bit accumulation: a layer fed by a site costs integer MACs, one fed by an analog value float
  MACs; at the `full` level Q K^T has both operands quantised, softmax V too where P spikes (P
  quantised as its site's twin), else it keeps a float operand;
- SNN: a spike-driven layer costs one accumulate per input spike per synapse it reaches, counted
  from the spikes that actually arrived and the layer's real fan-out at each input position
  (padding borders included, see `fan_out`); analog-per-step layers cost MACs every step,
  analog-once layers (conv_in on the image, the timestep MLP and projections) once; `full`
  attention costs the accumulates of its spike-driven products Q K^T and P V (q, k, v and, where
  P spikes, P's spikes selecting stored sums, converter/residual.spiking_attention), plus with
  analog P float MACs for (P_t - P_{t-1}) S_{t-1} on the entries of S_{t-1} already reached
  (none when nothing is emitted before the last step). Two SNN figures: float
  accumulates (0.9 pJ, against the float ANN) and, with the same 8-bit weights as the quantised
  ANN, 32-bit integer accumulates (against the quantised ANN).
Elementwise work (32-bit float, costs per element in ELEMENTWISE): shared by both sides, once per
evaluation in the ANN and every step in the SNN: GroupNorm, SiLU, softmax, residual and
timestep-bias adds; the SNN alone: each site's running mean, expectation compensation, clamp and
neuron update (a reset per spike), the running means and compensation of analog attention, the
output's time average. A folded bias map is added like any bias and counted on neither side.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...converter.spiking.layers import SpikingActivation, SpikingAttention, SpikingResnetBlock2D
from ...converter.spiking.model import SpikingUNet2DModel
from ...converter.spiking.operations import ANALOG_PER_STEP, SPIKE_DRIVEN, classify_layers, layer_kind
from ...converter.spiking.residual import SpikeDrivenAttention, feeding_site

HOROWITZ_PJ = {"fp32_mult": 3.7, "fp32_add": 0.9, "int8_mult": 0.2, "int8_add": 0.03, "int32_mult": 3.1,
               "int32_add": 0.1}
PJ_PER_MAC = HOROWITZ_PJ["fp32_mult"] + HOROWITZ_PJ["fp32_add"]
PJ_PER_AC = HOROWITZ_PJ["fp32_add"]
WEIGHT_BITS, ACCUMULATOR_BITS = 8, 32
# (float adds, float mults) per element; exp, division and reciprocal square root count as one mult.
ELEMENTWISE = {
    "group_norm": (4, 2),  # statistics: x and x^2 summed; normalise: subtract, scale, shift
    "frozen_norm": (1, 1),  # a per-channel affine map (statistics frozen from calibration)
    "silu": (1, 3),  # exp, 1 + e, division, product
    "softmax": (2, 2),  # max-subtract, exp, sum, normalise (per attention score)
    "residual_add": (1, 0),
    "timestep_bias": (1, 0),  # the projected timestep embedding added to conv1's output
    "running_mean": (1, 1),  # cumulative sum, times 1/t
    "compensation": (1, 1),  # t * g(m_t) minus its previous value
    "clamp": (2, 0),  # to [-theta_neg, theta_pos]
    "neuron_signed": (3, 0),  # charge, two threshold tests
    "neuron_unsigned": (2, 0),  # charge, one threshold test
    "neuron_reset": (1, 0),  # per spike: subtract the emitted value
    "decode": (1, 0),  # output's time average, per output element and step
    "score_scale": (0, 1),  # A_t B_t^T / t^2 (+ key bias) per score, full attention
    "probability_change": (1, 0),  # P_t - P_{t-1} per score, full attention with analog P
    "attention_output": (4, 2),  # full attention with spiking P, per output element: R_t S_t / t, shift terms, increment
}


def int_mult_pj(bits_a: int, bits_b: int) -> float:
    return HOROWITZ_PJ["int8_mult"] * bits_a * bits_b / 64.0


def int_add_pj(bits: int) -> float:
    return HOROWITZ_PJ["int8_add"] * bits / 8.0


def elementwise_pj(name: str) -> float:
    adds, mults = ELEMENTWISE[name]
    return adds * HOROWITZ_PJ["fp32_add"] + mults * HOROWITZ_PJ["fp32_mult"]


def site_bits(snn: SpikingUNet2DModel) -> int:
    """Bits of the quantised twin's activations: ceil(log2(levels)) of one site's levels."""
    levels = 2 * snn.timesteps + 1 if snn.policy.negative_lobe == "signed" else snn.timesteps + 1
    return max(1, math.ceil(math.log2(levels)))


def fan_out(conv: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    """[H, W]: how many output positions each input position of `conv` reaches (borders included).

    The transposed convolution of an all-ones output map with an all-ones kernel: each input
    position collects one per (output position, tap) pair that reads it. Explicit zero padding
    before the conv (Downsample2D) is inside H, W and never carries spikes.
    """
    out_h = (height + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    covered_h = (out_h - 1) * conv.stride[0] - 2 * conv.padding[0] + conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
    covered_w = (out_w - 1) * conv.stride[1] - 2 * conv.padding[1] + conv.dilation[1] * (conv.kernel_size[1] - 1) + 1
    ones = torch.ones(1, 1, out_h, out_w, dtype=torch.float64)
    # output_padding: the last rows/columns the stride leaves over (reached by no tap, or by the taps of the
    # cropped padding side) so the map has the input's size
    return F.conv_transpose2d(ones, torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64), stride=conv.stride,
                              padding=conv.padding, output_padding=(height - covered_h, width - covered_w),
                              dilation=conv.dilation)[0, 0]


@dataclass
class OperationCounts:
    """Dense per-image, per-step counts of one converted model (one hooked call)."""

    layer_macs: dict[str, float]  # each Conv2d/Linear
    attention: dict[str, dict[str, float]]  # per block: tokens, channels, heads, group-norm elements, level
    site_elements: dict[str, float]  # neurons of each site
    site_norm: dict[str, str]  # "group_norm", "frozen_norm" or "none"
    site_silu: dict[str, bool]
    residual_adds: float
    timestep_bias_adds: float
    output_elements: float


def _norm_kind(site: SpikingActivation) -> str:
    if isinstance(site.norm, nn.GroupNorm):
        return "group_norm"
    return "none" if isinstance(site.norm, nn.Identity) else "frozen_norm"


@torch.no_grad()
def count_operations(snn: SpikingUNet2DModel) -> OperationCounts:
    """Dense operation counts per image and SNN step, measured with hooks on one call."""
    steps = snn.timesteps
    layer_macs: dict[str, float] = {}
    site_elements: dict[str, float] = {}
    attention: dict[str, dict[str, float]] = {}
    adds = {"residual": 0.0, "bias": 0.0}
    handles = []

    def per_image(t: torch.Tensor) -> float:
        """Elements per image and step: one image runs as T rows (analog-once parts as one row)."""
        return t.numel() / t.shape[0]

    def on_layer(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if isinstance(module, nn.Conv2d):
                per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            else:
                per_output = module.in_features
            layer_macs[path] = per_image(output) * per_output
        return hook

    def on_attention(path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            x = inputs[0]
            attn = module.attention
            level = module.level if isinstance(module, SpikeDrivenAttention) else "hybrid"
            attention[path] = {"tokens": x.shape[2] * x.shape[3], "channels": attn.inner_dim, "heads": attn.heads,
                               "norm_elements": per_image(x) if attn.group_norm is not None else 0.0,
                               "input_elements": per_image(x), "level": level,
                               "spiking_p": level == "full" and "p" in module.product_sites}
            adds["residual"] += per_image(output) if attn.residual_connection else 0.0
        return hook

    def on_resnet(module: nn.Module, inputs, output) -> None:
        adds["residual"] += per_image(output)
        if module.time_emb_proj is not None:
            adds["bias"] += per_image(output)

    for path, module in snn.unet.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer(path)))
        elif isinstance(module, SpikingActivation):
            handles.append(module.register_forward_hook(
                lambda m, i, out: site_elements.__setitem__(m.site, per_image(out))))
        elif isinstance(module, (SpikingAttention, SpikeDrivenAttention)):
            handles.append(module.register_forward_hook(on_attention(path)))
        elif isinstance(module, SpikingResnetBlock2D):
            handles.append(module.register_forward_hook(on_resnet))
    config = snn.config
    try:
        out = snn.unet(torch.zeros(steps, config.in_channels, config.sample_size, config.sample_size, device=snn.device),
                       torch.zeros(steps, device=snn.device)).sample
    finally:
        for handle in handles:
            handle.remove()
    sites = snn.sites()
    return OperationCounts(
        layer_macs=layer_macs, attention=attention, site_elements=site_elements,
        site_norm={name: _norm_kind(site) for name, site in sites.items()},
        site_silu={name: not isinstance(site.activation, nn.Identity) and site.neuron.signed
                   for name, site in sites.items()},
        residual_adds=adds["residual"], timestep_bias_adds=adds["bias"], output_elements=out[0].numel())


@dataclass
class Activity:
    """What ran during a measurement: accumulates of spike-driven layers and spiking attention."""

    layer_acs: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    layer_images: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    attention: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def per_image(self) -> dict[str, float]:
        return {path: acs / max(self.layer_images[path], 1.0) for path, acs in self.layer_acs.items()}

    def summed(self, sum_counts) -> "Activity":
        """This activity summed over the processes of a sharded run (`sum_counts`: eval/runs/distributed.py)."""
        total = Activity()
        for path, (acs, images) in sum_counts({p: (self.layer_acs[p], self.layer_images[p])
                                               for p in self.layer_acs}).items():
            total.layer_acs[path], total.layer_images[path] = acs, images
        keys = ("acs", "macs", "images")
        for path, values in sum_counts({p: [self.attention[p][k] for k in keys] for p in self.attention}).items():
            total.attention[path].update(zip(keys, values))
        return total


def spike_units(site: SpikingActivation, spikes: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Spike units per element of a site's output: 1 per single spike; an exact neuron's graded
    spike of payload k counts k (as k accumulates: a payload is a small integer times the weight,
    counted as repeated adds). Read from the value: k = |x| / theta of its sign (a step in which
    both sides of an ON/OFF neuron change is counted by its net value)."""
    x = spikes.movedim(channel_dim, 1)
    theta_pos, theta_neg = site.neuron.thresholds(x)
    units = torch.where(x > 0, x / theta_pos, -x / theta_neg).round_()
    return units.movedim(1, channel_dim)


def sent_units(site: SpikingActivation, spikes: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Spike units per element that `site` sent to make `spikes` (its output, as a layer receives
    it): the spikes' own units under rate coding; under delta coding the units of the changes the
    site sent (converter/spiking/delta.py), which the receiver added to what it held."""
    delta = getattr(site.neuron, "delta", None)
    if delta is None:
        return spike_units(site, spikes, channel_dim)
    events = delta.events.flatten(0, 1)
    if channel_dim == 1 and events.shape != spikes.shape:
        raise ValueError(f"site {site.site} sent {tuple(events.shape)} but its layer received {tuple(spikes.shape)}")
    return events if channel_dim == 1 else events.movedim(1, -1).reshape(spikes.shape)


class ActivityMonitor:
    """Hooks that count what a converted model's spikes make its layers do, while active.

    Each spike-driven Conv2d: its input's spike units per position (over time, batch and
    channels) times the fan-out map, times the output channels a spike reaches (out / groups).
    Each spike-driven Linear: spike units times out_features. `full` attention: the spike units of
    its q, k, v (and P) sites, each times the stored sums it selects; with analog P, the entries of
    S_{t-1} already reached, which (P_t - P_{t-1}) S_{t-1} multiplies.
    """

    def __init__(self, snn: SpikingUNet2DModel, activity: Activity | None = None) -> None:
        self.snn = snn
        self.activity = Activity() if activity is None else activity
        self._fan_outs: dict[tuple[str, int, int], torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> Activity:
        kinds = classify_layers(self.snn)
        modules = dict(self.snn.unet.named_modules())
        for path, (kind, _) in kinds.items():
            if kind == SPIKE_DRIVEN:
                self._handles.append(modules[path].register_forward_pre_hook(self._layer_hook(path)))
        for path, module in modules.items():
            if isinstance(module, SpikeDrivenAttention) and module.level == "full":
                sites = module.product_sites
                head_channels = module.attention.inner_dim // module.attention.heads
                for name in [n for n in ("q", "k", "p", "v") if n in sites]:
                    self._handles.append(sites[name].register_forward_hook(
                        self._product_hook(path, name, head_channels, spiking_p="p" in sites)))
        return self.activity

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _layer_hook(self, path: str):
        steps = self.snn.timesteps

        def hook(module: nn.Module, inputs) -> None:
            x = inputs[0].detach()
            if isinstance(module, nn.Conv2d):
                per_position = sent_units(feeding_site(module), x).sum(dim=(0, 1), dtype=torch.float64)
                key = (path, x.shape[-2], x.shape[-1])
                if key not in self._fan_outs:
                    self._fan_outs[key] = fan_out(module, x.shape[-2], x.shape[-1]).to(x.device)
                acs = (per_position * self._fan_outs[key]).sum() * (module.out_channels // module.groups)
            else:
                acs = sent_units(feeding_site(module), x, channel_dim=-1).sum(dtype=torch.float64) * module.out_features
            self.activity.layer_acs[path] += float(acs)
            self.activity.layer_images[path] += x.shape[0] / steps
        return hook

    def _product_hook(self, path: str, name: str, head_channels: int, spiking_p: bool):
        steps = self.snn.timesteps

        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            spikes = spike_units(module, output.detach()).unflatten(0, (steps, -1))  # [T, B, C, N] or [T, B, heads, N, N]
            tokens = spikes.shape[-1]
            record = self.activity.attention[path]
            per_step = spikes.flatten(1).sum(dim=1, dtype=torch.float64)
            if name == "q":  # each q spike adds a row of B_t (all keys)
                record["acs"] += float(per_step.sum()) * tokens
            elif name == "k":  # each k spike adds a column of A_{t-1} (t >= 2) and b_q . k to the key bias
                record["acs"] += float(per_step[1:].sum()) * tokens + float(per_step.sum())
            elif name == "p":  # each P spike adds a row of S_{t-1} (t >= 2) and itself to its row's sum (b_v)
                record["acs"] += float(per_step[1:].sum()) * head_channels + float(per_step.sum())
            elif spiking_p:  # each v spike adds a column of R_t (all queries) and itself to its key sum (b_p)
                record["acs"] += float(per_step.sum()) * (tokens + 1)
                record["images"] += spikes.shape[1]
            else:  # each v spike adds a column of P_t; (P_t - P_{t-1}) S_{t-1} multiplies what S holds
                reached = (spikes.cumsum(dim=0) > 0).flatten(1).sum(dim=1, dtype=torch.float64)
                record["acs"] += float(per_step.sum()) * tokens
                record["macs"] += float(reached[:-1].sum()) * tokens
                record["images"] += spikes.shape[1]
        return hook


def _site_fed(kinds: dict, path: str) -> bool:
    return kinds[path][0] == SPIKE_DRIVEN


def energy_estimate(snn: SpikingUNet2DModel, counts: OperationCounts, activity: Activity,
                    spike_rates: dict[str, float]) -> dict:
    """Float ANN, quantised ANN and SNN energy per image and UNet evaluation, broken down by layer kind.

    `spike_rates`: spikes per neuron and step of each site, measured with the activity.
    """
    steps, kinds, bits = snn.timesteps, classify_layers(snn), site_bits(snn)
    int_mac = int_mult_pj(bits, WEIGHT_BITS) + int_add_pj(ACCUMULATOR_BITS)
    int_ac = int_add_pj(ACCUMULATOR_BITS)
    acs = activity.per_image()
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(kind: str, ann: float, qann: float, snn_fp: float, snn_int: float) -> None:
        row = rows[kind]
        row["ann_pj"] += ann
        row["qann_pj"] += qann
        row["snn_pj"] += snn_fp
        row["snn_int_pj"] += snn_int

    ann_macs = snn_acs = snn_macs = 0.0
    for path, macs in counts.layer_macs.items():
        kind, _ = kinds[path]
        ann_macs += macs
        qann = macs * (int_mac if _site_fed(kinds, path) else PJ_PER_MAC)
        if kind == SPIKE_DRIVEN:
            snn_acs += acs.get(path, 0.0)
            add(layer_kind(path), PJ_PER_MAC * macs, qann, PJ_PER_AC * acs.get(path, 0.0), int_ac * acs.get(path, 0.0))
        else:
            spent = macs * (steps if kind == ANALOG_PER_STEP else 1)
            snn_macs += spent
            add(layer_kind(path), PJ_PER_MAC * macs, qann, PJ_PER_MAC * spent, PJ_PER_MAC * spent)

    shared = snn_only = 0.0
    for path, block in counts.attention.items():
        n, c, heads = block["tokens"], block["channels"], block["heads"]
        products, scores = 2.0 * n * n * c, heads * n * n
        ann_pj = PJ_PER_MAC * products
        softmax = elementwise_pj("softmax") * scores
        norm = elementwise_pj("group_norm") * block["norm_elements"]
        if block["level"] == "full":
            measured = activity.attention.get(path, {})
            images = max(measured.get("images", 0.0), 1.0)
            block_acs, block_macs = measured.get("acs", 0.0) / images, measured.get("macs", 0.0) / images
            integer_product = n * n * c * (int_mult_pj(bits, bits) + int_add_pj(ACCUMULATOR_BITS))
            if block["spiking_p"]:
                qann = 2 * integer_product
                extra = steps * (scores * elementwise_pj("score_scale") + n * c * elementwise_pj("attention_output"))
            else:
                qann = integer_product + PJ_PER_MAC * n * n * c
                extra = steps * scores * (elementwise_pj("score_scale") + elementwise_pj("probability_change"))
            snn_acs += block_acs
            snn_macs += block_macs
            add("attention products", ann_pj, qann, PJ_PER_AC * block_acs + PJ_PER_MAC * block_macs + extra,
                int_ac * block_acs + PJ_PER_MAC * block_macs + extra)
            snn_only += extra
            # running means: none beyond the sites' own; compensation of the attention GroupNorm
            own = steps * block["input_elements"] * (elementwise_pj("running_mean") + elementwise_pj("compensation"))
        else:
            snn_macs += products * steps
            add("attention products", ann_pj, ann_pj, ann_pj * steps, ann_pj * steps)
            # hybrid: the whole block on running means; residual: GroupNorm and q/k/v on running means
            means, compensations = (1, 1) if block["level"] == "hybrid" else (4, 2)  # + q, k, v; GroupNorm output
            own = steps * block["input_elements"] * (means * elementwise_pj("running_mean")
                                                     + compensations * elementwise_pj("compensation"))
        add("attention softmax + GroupNorm", softmax + norm, softmax + norm, steps * (softmax + norm),
            steps * (softmax + norm))
        add("SNN-only elementwise", 0.0, 0.0, own, own)
        shared += softmax + norm
        snn_only += own

    for name, elements in counts.site_elements.items():
        norm = counts.site_norm[name]
        work = (elementwise_pj(norm) if norm != "none" else 0.0) + (elementwise_pj("silu") if counts.site_silu[name] else 0.0)
        if work:
            add("site GroupNorm + SiLU", work * elements, work * elements, steps * work * elements, steps * work * elements)
            shared += work * elements
        neuron = "neuron_signed" if snn.sites()[name].neuron.signed else "neuron_unsigned"
        per_step = sum(elementwise_pj(op) for op in ("running_mean", "compensation", "clamp", neuron))
        spikes = spike_rates.get(name, 0.0) * steps * elements
        own = steps * elements * per_step + elementwise_pj("neuron_reset") * spikes
        add("SNN-only elementwise", 0.0, 0.0, own, own)
        snn_only += own
    adds = elementwise_pj("residual_add") * counts.residual_adds + elementwise_pj("timestep_bias") * counts.timestep_bias_adds
    add("residual + timestep adds", adds, adds, steps * adds, steps * adds)
    decode = steps * counts.output_elements * elementwise_pj("decode")
    add("SNN-only elementwise", 0.0, 0.0, decode, decode)
    shared += adds
    snn_only += decode

    totals = {key: sum(row[key] for row in rows.values()) for key in ("ann_pj", "qann_pj", "snn_pj", "snn_int_pj")}
    spike_driven_ann = sum(PJ_PER_MAC * m for p, m in counts.layer_macs.items() if kinds[p][0] == SPIKE_DRIVEN)
    return {
        "convention": "45 nm, Horowitz ISSCC 2014: float mult 3.7 pJ + add 0.9 pJ (MAC 4.6, AC 0.9); quantised "
                      f"ANN: {bits}-bit activations x {WEIGHT_BITS}-bit weights ({int_mac:.3f} pJ per MAC with a "
                      f"{ACCUMULATOR_BITS}-bit accumulate); SNN with those weights: {int_ac:.3f} pJ per accumulate; "
                      "elementwise work in float at the costs listed in eval/metrics/energy.py",
        "activation_bits": bits,
        "ann": {"macs": ann_macs + sum(2.0 * b["tokens"] ** 2 * b["channels"] for b in counts.attention.values()),
                "elementwise_microjoules": shared * 1e-6, "microjoules": totals["ann_pj"] * 1e-6},
        "quantised_ann": {"microjoules": totals["qann_pj"] * 1e-6},
        "snn": {"acs": snn_acs, "analog_macs": snn_macs, "snn_only_elementwise_microjoules": snn_only * 1e-6,
                "shared_elementwise_microjoules": steps * shared * 1e-6, "microjoules": totals["snn_pj"] * 1e-6,
                "microjoules_int_weights": totals["snn_int_pj"] * 1e-6},
        "snn_over_ann": totals["snn_pj"] / totals["ann_pj"],
        "snn_over_quantised_ann": totals["snn_int_pj"] / totals["qann_pj"],
        "snn_beats_quantised_ann": totals["snn_int_pj"] < totals["qann_pj"],
        "synaptic_only_snn_over_ann": PJ_PER_AC * sum(acs.values()) / spike_driven_ann if spike_driven_ann else None,
        "by_kind_microjoules": {kind: {k.replace("_pj", ""): v * 1e-6 for k, v in row.items()} for kind, row in rows.items()},
    }

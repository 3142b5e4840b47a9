"""Energy per image and UNet evaluation, counted from what runs, in two conventions side by side.

Unit costs and fan-out: eval/metrics/costs.py; what ran: eval/metrics/activity.py.

Baselines:
- float ANN: every Conv2d/Linear MAC and attention's two matrix products (2 N^2 C per block);
- dense quantised ANN (the SNN's twin): each site's output quantised to ceil(log2(levels)) bits
  (2T+1 levels for signed neurons, T+1 for plain IF), 8-bit weights, 32-bit accumulation: a
  layer fed by a site costs integer MACs, one fed by an analog value float MACs; at `full` Q K^T
  has both operands quantised, softmax V too where P spikes, else it keeps a float operand;
- zero-skipping fixed-point quantised ANN: the same, but a zero activation costs nothing (MACs
  only for the twin's non-zero activations, measured on the same inputs), and attention's
  products in 8-bit fixed point (8-bit probabilities and values) wherever they are not already
  quantised: what a quantised accelerator that skips zeros spends.

The SNN, two conventions:
- "synaptic_events" (the default, the one the top-level keys use): a spike of one unit costs one
  integer accumulate per target, a graded spike of k units a multiply of its payload bits by the
  8-bit weight plus the accumulate (so graded payloads are not charged as k cheap adds); analog
  work a step needs (analog-per-step layers, GroupNorm/SiLU/softmax on running means, neuron
  updates, decoding) is charged once per SNN step in which anything was sent, so work done once
  per UNet evaluation (every spike at the last step: `deferred`; every site on its completed
  input window: `spread`) is charged once;
- "units_x_ac" (the earlier convention): every spike unit one accumulate (float 0.9 pJ against
  the float ANN; 32-bit integer against the quantised ANN), every analog-per-step operation T times.
Analog-once layers (conv_in on the image, the timestep MLP and projections) cost their MACs once.
Elementwise work is 32-bit float at the costs in costs.ELEMENTWISE. Not counted on any side:
memory traffic (weights, activations, membrane state), membrane potentials kept between steps
(only their updates are), control and routing of events.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from ...converter.spiking.layers import SpikingActivation, SpikingAttention, SpikingResnetBlock2D
from ...converter.spiking.model import SpikingUNet2DModel
from ...converter.spiking.operations import ANALOG_PER_STEP, SPIKE_DRIVEN, classify_layers, layer_kind
from ...converter.spiking.residual import SpikeDrivenAttention
from .activity import Activity
from .costs import (ACCUMULATOR_BITS, PJ_PER_AC, PJ_PER_MAC, WEIGHT_BITS, elementwise_pj, int_add_pj, int_mult_pj)


def site_bits(snn: SpikingUNet2DModel) -> int:
    """Bits of the quantised twin's activations: ceil(log2(levels)) of one site's levels."""
    levels = 2 * snn.timesteps + 1 if snn.policy.negative_lobe == "signed" else snn.timesteps + 1
    return max(1, math.ceil(math.log2(levels)))



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


def _site_fed(kinds: dict, path: str) -> bool:
    return kinds[path][0] == SPIKE_DRIVEN


SIDES = ("ann_pj", "qann_pj", "qann_zero_skip_pj", "snn_pj", "snn_int_pj")
NOT_COUNTED = ("memory traffic (weights, activations, membrane state)", "membrane potentials held between steps",
               "event routing and control")


def charged_steps(snn: SpikingUNet2DModel, activity: Activity) -> int:
    """SNN steps whose analog work the synaptic-events convention charges: those in which any
    spike was sent (all T under a causal temporal schedule, one when everything waits for the last
    step). Under `spread` emission a site's window starts when its inputs' windows have ended, so
    it evaluates its nonlinearity once, on the completed input, and linear analog layers run once
    on the accumulated input: one step's analog work, although the spikes are spread over T."""
    if snn.policy.pipelined:
        return 1
    active = sum(1 for units in activity.step_units.values() if units > 0)
    return active if active else snn.timesteps


def _rows(snn: SpikingUNet2DModel, counts: OperationCounts, activity: Activity, spike_rates: dict[str, float],
          steps: int, events: bool) -> dict[str, dict[str, float]]:
    """pJ per image and UNet evaluation by layer kind, for every side; `steps`: SNN steps whose
    analog work is charged; `events`: spike-driven layers cost their synaptic events (else units x AC)."""
    kinds, bits = classify_layers(snn), site_bits(snn)
    int_mac = int_mult_pj(bits, WEIGHT_BITS) + int_add_pj(ACCUMULATOR_BITS)
    int_ac = int_add_pj(ACCUMULATOR_BITS)
    fixed_mac = int_mult_pj(8, 8) + int_add_pj(ACCUMULATOR_BITS)  # 8-bit fixed-point attention products
    acs, event_pj = activity.per_image("layer_acs"), activity.per_image("layer_event_pj")
    nonzero_macs = activity.per_image("layer_nonzero_macs")
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(kind: str, ann: float, qann: float, zero_skip: float, snn_fp: float, snn_int: float) -> None:
        for side, value in zip(SIDES, (ann, qann, zero_skip, snn_fp, snn_int)):
            rows[kind][side] += value

    for path, macs in counts.layer_macs.items():
        kind, _ = kinds[path]
        if kind == SPIKE_DRIVEN:
            spent = event_pj.get(path, 0.0) if events else None
            add(layer_kind(path), PJ_PER_MAC * macs, int_mac * macs, int_mac * nonzero_macs.get(path, 0.0),
                spent if events else PJ_PER_AC * acs.get(path, 0.0), spent if events else int_ac * acs.get(path, 0.0))
        else:
            qann = macs * (int_mac if _site_fed(kinds, path) else PJ_PER_MAC)
            spent = PJ_PER_MAC * macs * (steps if kind == ANALOG_PER_STEP else 1)
            add(layer_kind(path), PJ_PER_MAC * macs, qann, qann, spent, spent)

    for path, block in counts.attention.items():
        n, c, heads = block["tokens"], block["channels"], block["heads"]
        products, scores = 2.0 * n * n * c, heads * n * n
        shared = elementwise_pj("softmax") * scores + elementwise_pj("group_norm") * block["norm_elements"]
        if block["level"] == "full":
            measured = activity.attention.get(path, {})
            images = max(measured.get("images", 0.0), 1.0)
            block_acs, block_macs = measured.get("acs", 0.0) / images, measured.get("macs", 0.0) / images
            integer_product = n * n * c * (int_mult_pj(bits, bits) + int_add_pj(ACCUMULATOR_BITS))
            if block["spiking_p"]:
                qann = zero_skip = 2 * integer_product
                extra = steps * (scores * elementwise_pj("score_scale") + n * c * elementwise_pj("attention_output"))
            else:
                qann, zero_skip = integer_product + PJ_PER_MAC * n * n * c, integer_product + fixed_mac * n * n * c
                extra = steps * scores * (elementwise_pj("score_scale") + elementwise_pj("probability_change"))
            add("attention products", PJ_PER_MAC * products, qann, zero_skip,
                PJ_PER_AC * block_acs + PJ_PER_MAC * block_macs + extra, int_ac * block_acs + PJ_PER_MAC * block_macs + extra)
            own = steps * block["input_elements"] * (elementwise_pj("running_mean") + elementwise_pj("compensation"))
        else:
            ann = PJ_PER_MAC * products
            add("attention products", ann, ann, fixed_mac * products, ann * steps, ann * steps)
            means, compensations = (1, 1) if block["level"] == "hybrid" else (4, 2)  # + q, k, v; GroupNorm output
            own = steps * block["input_elements"] * (means * elementwise_pj("running_mean")
                                                     + compensations * elementwise_pj("compensation"))
        add("attention softmax + GroupNorm", shared, shared, shared, steps * shared, steps * shared)
        add("SNN-only elementwise", 0.0, 0.0, 0.0, own, own)

    for name, elements in counts.site_elements.items():
        norm = counts.site_norm[name]
        work = (elementwise_pj(norm) if norm != "none" else 0.0) + (elementwise_pj("silu") if counts.site_silu[name] else 0.0)
        if work:
            add("site GroupNorm + SiLU", *([work * elements] * 3), *([steps * work * elements] * 2))
        neuron = "neuron_signed" if snn.sites()[name].neuron.signed else "neuron_unsigned"
        per_step = sum(elementwise_pj(op) for op in ("running_mean", "compensation", "clamp", neuron))
        spikes = spike_rates.get(name, 0.0) * snn.timesteps * elements
        own = steps * elements * per_step + elementwise_pj("neuron_reset") * spikes
        add("SNN-only elementwise", 0.0, 0.0, 0.0, own, own)
    adds = elementwise_pj("residual_add") * counts.residual_adds + elementwise_pj("timestep_bias") * counts.timestep_bias_adds
    add("residual + timestep adds", adds, adds, adds, steps * adds, steps * adds)
    decode = steps * counts.output_elements * elementwise_pj("decode")
    add("SNN-only elementwise", 0.0, 0.0, 0.0, decode, decode)
    return rows


def _analog_macs(counts: OperationCounts, kinds: dict, activity: Activity, steps: int) -> float:
    """Float MACs the SNN still spends per image and evaluation, with `steps` charged SNN steps."""
    layers = sum(m * (steps if kinds[p][0] == ANALOG_PER_STEP else 1)
                 for p, m in counts.layer_macs.items() if kinds[p][0] != SPIKE_DRIVEN)
    attention = 0.0
    for path, block in counts.attention.items():
        if block["level"] == "full":
            measured = activity.attention.get(path, {})
            attention += measured.get("macs", 0.0) / max(measured.get("images", 0.0), 1.0)
        else:
            attention += 2.0 * block["tokens"] ** 2 * block["channels"] * steps
    return layers + attention


def _totals(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    return {side: sum(row[side] for row in rows.values()) for side in SIDES}


def _by_kind(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {kind: {side.replace("_pj", ""): v * 1e-6 for side, v in row.items()} for kind, row in rows.items()}


def energy_estimate(snn: SpikingUNet2DModel, counts: OperationCounts, activity: Activity,
                    spike_rates: dict[str, float]) -> dict:
    """Float ANN, dense and zero-skipping quantised ANN and SNN energy per image and UNet
    evaluation, in both conventions (module docstring), broken down by layer kind.

    `spike_rates`: spikes per neuron and step of each site, measured with the activity.
    """
    bits, steps = site_bits(snn), charged_steps(snn, activity)
    events_rows = _rows(snn, counts, activity, spike_rates, steps, events=True)
    units_rows = _rows(snn, counts, activity, spike_rates, snn.timesteps, events=False)
    events, units = _totals(events_rows), _totals(units_rows)
    kinds = classify_layers(snn)
    synapses = sum(m for p, m in counts.layer_macs.items() if kinds[p][0] == SPIKE_DRIVEN)
    spike_events = sum(activity.per_image("layer_events").values())
    int_mac = int_mult_pj(bits, WEIGHT_BITS) + int_add_pj(ACCUMULATOR_BITS)
    return {
        "convention": "synaptic events: 45 nm (Horowitz, ISSCC 2014), 8-bit weights, 32-bit accumulators: a binary "
                      f"spike {int_add_pj(ACCUMULATOR_BITS):.3f} pJ per target, a graded one its payload bits x weight "
                      f"multiply plus that add; analog work charged in {steps} of {snn.timesteps} SNN steps ("
                      + ("spread emission: each site works once, on its completed input window"
                         if snn.policy.pipelined
                         else "those that sent spikes") + "); quantised ANN: "
                      f"{bits}-bit activations x {WEIGHT_BITS}-bit weights ({int_mac:.3f} pJ per MAC); float MAC 4.6 pJ",
        "not_counted": list(NOT_COUNTED),
        "activation_bits": bits,
        "charged_steps": steps,
        "snn_over_ann": events["snn_int_pj"] / events["ann_pj"],
        "snn_over_qann": events["snn_int_pj"] / events["qann_pj"],
        "snn_over_qann_zero_skip": events["snn_int_pj"] / events["qann_zero_skip_pj"],
        "max_payload": activity.max_payload,
        "last_step_unit_fraction": activity.last_step_unit_fraction,
        "spikes_per_synapse": spike_events / synapses if synapses else None,
        "ann": {"macs": sum(counts.layer_macs.values()) + sum(2.0 * b["tokens"] ** 2 * b["channels"]
                                                              for b in counts.attention.values()),
                "microjoules": events["ann_pj"] * 1e-6},
        "quantised_ann": {"microjoules": events["qann_pj"] * 1e-6},
        "quantised_ann_zero_skip": {"microjoules": events["qann_zero_skip_pj"] * 1e-6},
        "snn": {"synaptic_events": spike_events, "analog_macs": _analog_macs(counts, kinds, activity, steps),
                "microjoules": events["snn_int_pj"] * 1e-6},
        "by_kind_microjoules": _by_kind(events_rows),
        "units_x_ac": {
            "convention": "every spike unit one accumulate (float 0.9 pJ against the float ANN, 32-bit integer "
                          "against the quantised ANN), analog per-step work T times",
            "snn_over_ann": units["snn_pj"] / units["ann_pj"],
            "snn_over_qann": units["snn_int_pj"] / units["qann_pj"],
            "snn_over_qann_zero_skip": units["snn_int_pj"] / units["qann_zero_skip_pj"],
            "snn_microjoules": units["snn_pj"] * 1e-6,
            "spike_units_x_targets": sum(activity.per_image("layer_acs").values()),
            "by_kind_microjoules": _by_kind(units_rows),
        },
    }


NOT_MEASURED_CLOSED_FORM = "not measured: the closed form simulates no spikes (use --simulation both)"


def closed_form_energy() -> dict:
    """The energy section of a closed-form run: every key present, null, with the reason."""
    keys = ("snn_over_ann", "snn_over_qann", "snn_over_qann_zero_skip", "max_payload", "last_step_unit_fraction",
            "spikes_per_synapse")
    return {"convention": NOT_MEASURED_CLOSED_FORM, "not_counted": list(NOT_COUNTED), **dict.fromkeys(keys),
            "units_x_ac": {"snn_over_ann": None, "convention": NOT_MEASURED_CLOSED_FORM}}

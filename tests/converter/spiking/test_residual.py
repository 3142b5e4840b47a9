"""Spiking levels: spike-only inputs of spike-driven layers, exact bias folding, spiking attention."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from sdm.calibration.record import CalibrationError, CalibrationRecord
from sdm.calibration.sites import IDENTITY
from sdm.converter.convert import convert
from sdm.converter.spiking import residual
from sdm.converter.folder import load_converted, save_converted
from sdm.converter.spiking.layers import SpikingActivation
from sdm.converter.spiking.mapping import UnsupportedModuleError, convert_unet_modules
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.residual import FoldedConv2d, feeding_site, spiking_attention
from torch import nn

from tests.conftest import make_tiny_unet

LEVELS = ("hybrid", "residual", "full", "full-spiking-p")  # the last: full with a site on P
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
TIMESTEPS = torch.tensor([50, 700])


def _policy(level: str, **options) -> ConversionPolicy:
    if level == "full-spiking-p":
        return ConversionPolicy(spiking="full", attention_probabilities="spiking", **options)
    return ConversionPolicy(spiking=level, **options)


def _convert(tiny_source, tiny_record, level: str, timesteps: int = 3, neuron: str = "exact"):
    snn = convert(tiny_source, tiny_record, _policy(level, timesteps=timesteps, neuron=neuron))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # bias corrections large enough that folding them wrongly would show
        for site in snn.sites().values():
            site.output_shift.uniform_(-0.3, 0.3, generator=generator)
    return snn


def _folded_layers(snn) -> dict[str, nn.Module]:
    return {path: m for path, m in snn.unet.named_modules() if feeding_site(m) is not None}


@pytest.mark.parametrize("level", LEVELS)
def test_every_spike_driven_layer_receives_only_its_sites_spikes(tiny_source, tiny_record, level):
    snn = _convert(tiny_source, tiny_record, level, neuron="single-spike")  # one spike: exactly +theta or -theta
    layers = _folded_layers(snn)
    seen: dict[str, bool] = {}

    def check(path: str, module: nn.Module, inputs) -> None:
        site = feeding_site(module)
        x = inputs[0]
        channels = x.movedim(-1 if isinstance(module, nn.Linear) else 1, 0).reshape(x.shape[-1 if isinstance(module, nn.Linear) else 1], -1)
        pos, neg = site.neuron.threshold_pos[:, None], site.neuron.threshold_neg[:, None]
        allowed = (channels == 0) | (channels == pos) | (channels == -neg)
        assert bool(allowed.all()), f"{path} got a value that is not a spike of {site.site}"
        seen[path] = bool((channels != 0).any())

    handles = [m.register_forward_pre_hook(lambda m, i, path=p: check(path, m, i)) for p, m in layers.items()]
    with torch.no_grad():
        snn(X, TIMESTEPS)
    for handle in handles:
        handle.remove()
    assert set(seen) == set(layers) and any(seen.values())
    # 8 ResNet blocks (conv1, conv2) + conv_out; then 5 shortcuts, 2 resamplers, q/k/v of 4 attention
    # blocks; then their 4 output projections
    full = 17 + 5 + 2 + 4 * 4
    assert len(layers) == {"hybrid": 17, "residual": 17 + 5 + 2 + 4 * 3, "full": full, "full-spiking-p": full}[level]


def _unfolded_copy(snn):
    """The same model with each site adding its bias correction to its spikes and plain consumers."""
    reference = copy.deepcopy(snn)
    for module in reference.unet.modules():
        site = feeding_site(module)
        if site is not None:
            plain = nn.Conv2d.forward if isinstance(module, nn.Conv2d) else nn.Linear.forward
            module.forward = plain.__get__(module)
    for site in reference.sites().values():
        site.register_forward_hook(
            lambda s, i, out: out + s.output_shift.view(1, -1, *([1] * (out.dim() - 2))))
    return reference


@pytest.mark.parametrize("level", LEVELS)
def test_folded_bias_correction_leaves_outputs_unchanged(tiny_source, tiny_record, level, monkeypatch):
    snn = _convert(tiny_source, tiny_record, level)
    reference = _unfolded_copy(snn)
    with torch.no_grad():
        folded = snn(X, TIMESTEPS).sample
        # unfolded, the products see (spikes + shift) themselves: no shifts to fold
        monkeypatch.setattr(residual, "spiking_attention",
                            lambda q, k, v, heads, steps, scale, site, shifts: spiking_attention(q, k, v, heads, steps,
                                                                                                 scale, site))
        unfolded = reference(X, TIMESTEPS).sample
    assert torch.allclose(folded, unfolded, rtol=1e-4, atol=1e-4), float((folded - unfolded).abs().max())


def test_border_response_of_a_padded_conv_is_not_a_constant(tiny_source, tiny_record):
    snn = _convert(tiny_source, tiny_record, "residual")
    conv = next(m for m in snn.unet.modules() if isinstance(m, FoldedConv2d) and m.padding != (0, 0))
    response = conv.shift_response(torch.zeros(1, conv.in_channels, 8, 8))
    interior = (conv.weight.sum(dim=(2, 3)) @ feeding_site(conv).output_shift).view(-1)
    assert torch.allclose(response[0, :, 3, 3], interior, atol=1e-6)
    assert not torch.allclose(response[0, :, 0, 0], interior, atol=1e-4)  # a corner sees 4 of 9 taps


def test_downsample_fold_leaves_its_asymmetric_zero_pad_without_bias_correction(tiny_source, tiny_record):
    snn = _convert(tiny_source, tiny_record, "residual")
    down = snn.unet.down_blocks[0].downsamplers[0]
    down.module.padding = 0  # diffusers pads (0, 1, 0, 1) itself for padding 0
    down.module.conv.padding, down.module.conv.input_pad = (0, 0), (0, 1, 0, 1)
    site = down.site
    h = torch.randn(3 * 2, 16, 8, 8)
    with torch.no_grad():
        spikes = site(h)
        got = down.module(spikes)
        expected = F.conv2d(F.pad(spikes + site.output_shift.view(1, -1, 1, 1), (0, 1, 0, 1)), down.module.conv.weight,
                            down.module.conv.bias, stride=2)
    assert torch.allclose(got, expected, atol=1e-5)


def _spike_trains(generator: torch.Generator, steps: int, batch: int, tokens: int, channels: int):
    theta = torch.rand(channels, generator=generator) + 0.5
    return [torch.randint(-1, 2, (steps * batch, tokens, channels), generator=generator).float() * theta
            for _ in range(3)]


def test_analog_p_attention_accumulates_to_attention_on_time_averaged_spikes():
    generator = torch.Generator().manual_seed(0)
    steps, batch, tokens, channels, heads = 5, 2, 6, 8, 2
    q, k, v = _spike_trains(generator, steps, batch, tokens, channels)
    scale = (channels // heads) ** -0.5
    out = spiking_attention(q, k, v, heads, steps, scale).unflatten(0, (steps, batch))

    def heads_first(y: torch.Tensor, upto: int = steps) -> torch.Tensor:
        return y.unflatten(0, (steps, batch))[:upto].mean(dim=0).unflatten(-1, (heads, -1)).transpose(1, 2)

    for upto in (steps, 2):  # the whole sum, and every prefix: attention on the running means
        expected = F.scaled_dot_product_attention(heads_first(q, upto), heads_first(k, upto), heads_first(v, upto))
        assert torch.allclose(out[:upto].sum(dim=0) / upto, expected.transpose(1, 2).flatten(2), atol=1e-5)
    shifts = tuple(torch.randn(channels, generator=generator) * 0.3 for _ in range(3))
    folded = spiking_attention(q, k, v, heads, steps, scale, None, shifts).unflatten(0, (steps, batch)).sum(dim=0)
    expected = F.scaled_dot_product_attention(*[heads_first(y + b) for y, b in zip((q, k, v), shifts)])
    assert torch.allclose(folded, steps * expected.transpose(1, 2).flatten(2), atol=1e-5)


@pytest.mark.parametrize("emission", [(0, 0, False), (1, 1, False), (4, 0, False), (0, 0, True)])
def test_spiking_p_attention_accumulates_to_quantised_attention_on_time_averaged_spikes(emission):
    generator = torch.Generator().manual_seed(0)
    steps, batch, tokens, channels, heads = 5, 2, 6, 8, 2
    q, k, v = _spike_trains(generator, steps, batch, tokens, channels)
    site = SpikingActivation("p", nn.Identity(), nn.Identity(), heads, timesteps=steps, signed=False,
                             membrane_init=0.5, emission=emission)
    site.neuron.threshold_pos.copy_(torch.tensor([0.4, 0.7]))
    scale = (channels // heads) ** -0.5
    site.neuron.monitor = True
    out = spiking_attention(q, k, v, heads, steps, scale, site).unflatten(0, (steps, batch))
    assert site.neuron.spike_count > 0

    def heads_first(y: torch.Tensor) -> torch.Tensor:
        return y.unflatten(0, (steps, batch)).mean(dim=0).unflatten(-1, (heads, -1)).transpose(1, 2)

    def quantised_attention(q_bar, k_bar, v_bar, p_shift=0.0) -> torch.Tensor:
        probabilities = torch.softmax(q_bar @ k_bar.transpose(-1, -2) * scale, dim=-1)
        return ((site.twin(probabilities) + p_shift) @ v_bar).transpose(1, 2).flatten(2)

    expected = quantised_attention(heads_first(q), heads_first(k), heads_first(v))
    assert torch.allclose(out.sum(dim=0), steps * expected, atol=1e-5)
    unquantised = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v)).transpose(1, 2).flatten(2)
    assert not torch.allclose(expected, unquantised, atol=1e-2)  # P's site does quantise
    # the sites' bias corrections folded: the same as attention on the averages of (spikes + shift)
    shifts = tuple(torch.randn(channels, generator=generator) * 0.3 for _ in range(3))
    site.output_shift.copy_(torch.tensor([0.01, -0.02]))
    folded = spiking_attention(q, k, v, heads, steps, scale, site, shifts).unflatten(0, (steps, batch)).sum(dim=0)
    shifted = [heads_first(y + b) for y, b in zip((q, k, v), shifts)]
    expected = quantised_attention(*shifted, p_shift=site.output_shift.view(-1, 1, 1))
    assert torch.allclose(folded, steps * expected, atol=1e-5)


@pytest.mark.parametrize("level", ["residual", "full", "full-spiking-p"])
def test_levels_round_trip_through_save_and_load(tiny_source, tiny_record, tmp_path, level):
    snn = _convert(tiny_source, tiny_record, level)
    save_converted(snn, tiny_record, tmp_path)
    loaded = load_converted(tmp_path)
    assert loaded.policy == snn.policy and set(loaded.sites()) == set(snn.sites())
    with torch.no_grad():
        assert torch.equal(loaded(X, TIMESTEPS).sample, snn(X, TIMESTEPS).sample)


def test_a_record_without_stream_sites_is_refused_for_levels_that_need_them(tiny_source, tiny_record):
    old = CalibrationRecord(sites={n: s for n, s in tiny_record.sites.items() if s.activation != IDENTITY},
                            meta=tiny_record.meta, inputs=tiny_record.inputs, input_timesteps=tiny_record.input_timesteps)
    convert(tiny_source, old, ConversionPolicy(timesteps=2, spiking="hybrid"))
    with pytest.raises(CalibrationError, match="re-run calibration"):
        convert(tiny_source, old, ConversionPolicy(timesteps=2, spiking="residual"))


def test_a_record_without_probability_sites_serves_analog_p_but_not_spiking_p(tiny_source, tiny_record):
    old = CalibrationRecord(sites={n: s for n, s in tiny_record.sites.items() if not n.endswith(".attention_probs")},
                            meta=tiny_record.meta, inputs=tiny_record.inputs, input_timesteps=tiny_record.input_timesteps)
    convert(tiny_source, old, ConversionPolicy(timesteps=2, spiking="full"))
    with pytest.raises(CalibrationError, match="attention_probs.*re-run calibration|re-run calibration.*attention_probs"):
        convert(tiny_source, old, ConversionPolicy(timesteps=2, spiking="full", attention_probabilities="spiking"))


def test_stream_sites_are_signed_identity_sites_calibrated_like_the_others(tiny_source, tiny_record):
    snn = _convert(tiny_source, tiny_record, "full-spiking-p")
    stream = [s for name, s in snn.sites().items() if tiny_record.sites[name].activation == IDENTITY]
    assert len(stream) == 5 + 2 + 6 * 4  # shortcuts, resamplers, 6 per attention block
    probabilities = [s for s in stream if s.site.endswith(".attention_probs")]
    assert len(probabilities) == 4 and not any(s.neuron.signed for s in probabilities)  # P >= 0
    assert all(float(s.neuron.threshold_pos.max()) < 1 for s in probabilities)  # calibrated, not the max of P
    stream = [s for s in stream if s not in probabilities]
    assert all(isinstance(s, SpikingActivation) and s.neuron.signed and isinstance(s.norm, nn.Identity) for s in stream)
    assert all(float(s.neuron.threshold_pos.min()) > 0 and not torch.all(s.neuron.threshold_pos == 1) for s in stream)


def test_a_level_the_model_cannot_support_names_module_and_path():
    unet = make_tiny_unet()
    unet.down_blocks[0].downsamplers[0].norm = nn.LayerNorm(16)
    convert_unet_modules(copy.deepcopy(unet), ConversionPolicy(spiking="hybrid"))
    with pytest.raises(UnsupportedModuleError, match=r"Downsample2D .* at down_blocks\.0\.downsamplers\.0"):
        convert_unet_modules(unet, ConversionPolicy(spiking="residual"))

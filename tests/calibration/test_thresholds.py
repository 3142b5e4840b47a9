"""Threshold methods against brute force."""

import pytest
import torch
from sdm.calibration.record import SiteStats
from sdm.calibration.thresholds import neuron_quantise, site_thresholds


def sketch(values: torch.Tensor, q: int = 257) -> torch.Tensor:
    return torch.quantile(values, torch.linspace(0, 1, q), dim=1).T.contiguous()


def stats_from(z: torch.Tensor, activation: str = "relu") -> SiteStats:
    return SiteStats(z_quantiles=sketch(z), group_mean=torch.zeros(1), group_var=torch.ones(1), activation=activation)


def test_quantiser_matches_a_steady_input_neuron():
    # steady input 0.3 for T=4 with theta 1: 1.2 of charge, half-threshold start -> 1 spike -> 0.25
    assert float(neuron_quantise(torch.tensor(0.3), torch.tensor(1.0), 4, 0.5)) == pytest.approx(0.25)
    assert float(neuron_quantise(torch.tensor(5.0), torch.tensor(1.0), 4, 0.5)) == pytest.approx(1.0)


@pytest.mark.parametrize("timesteps", [2, 4, 8])
def test_mse_threshold_matches_brute_force(timesteps):
    torch.manual_seed(0)
    z = torch.cat([torch.randn(3, 4000).abs() * torch.tensor([[0.5], [1.0], [2.0]]), -torch.rand(3, 1000)], dim=1)
    stats = stats_from(z)
    found = site_thresholds(stats, timesteps, method="mse", signed=False, bias_correction=False).pos
    y = stats.z_quantiles.clamp_min(0)
    grid = torch.linspace(0.001, 1.0, 4000)[None, :] * y.max(dim=1).values[:, None]
    errors = (neuron_quantise(y[:, None, :], grid[:, :, None], timesteps, 0.5) - y[:, None, :]).pow(2).mean(dim=2)
    brute = grid.gather(1, errors.argmin(dim=1, keepdim=True)).squeeze(1)
    err = lambda th: (neuron_quantise(y, th[:, None], timesteps, 0.5) - y).pow(2).mean(dim=1)
    assert torch.all(err(found) <= err(brute) * 1.01 + 1e-9), (found, brute)


def test_max_and_percentile_methods():
    z = torch.arange(1, 1001, dtype=torch.float32)[None, :] / 100.0
    stats = stats_from(z)
    assert float(site_thresholds(stats, 4, method="max", signed=False).pos) == pytest.approx(10.0)
    assert float(site_thresholds(stats, 4, method="percentile", percentile=50.0, signed=False).pos) == pytest.approx(5.005, rel=1e-2)


def test_bias_correction_cancels_the_mean_error():
    torch.manual_seed(1)
    stats = stats_from(torch.randn(2, 5000) * 2, activation="silu")
    corrected = site_thresholds(stats, 2, method="mse", signed=True, bias_correction=True)
    plain = site_thresholds(stats, 2, method="mse", signed=True, bias_correction=False)
    assert torch.equal(corrected.pos, plain.pos) and plain.shift.abs().max() == 0
    assert corrected.shift.abs().max() > 0


def test_layer_granularity_gives_one_threshold():
    stats = stats_from(torch.rand(4, 1000) * torch.arange(1, 5)[:, None])
    thresholds = site_thresholds(stats, 4, method="max", granularity="layer", signed=False)
    assert torch.all(thresholds.pos == thresholds.pos[0]) and float(thresholds.pos[0]) == pytest.approx(4.0, rel=1e-2)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("init", [0.5, 0.0])
@pytest.mark.parametrize("timesteps", [1, 3, 8, 16])
def test_search_models_exactly_what_the_site_twin_and_the_stepped_neuron_emit(signed, init, timesteps):
    from sdm.calibration.thresholds import site_quantise
    from sdm.converter.spiking.layers import SpikingActivation

    generator = torch.Generator().manual_seed(timesteps)
    site = SpikingActivation("s", torch.nn.Identity(), torch.nn.Identity(), 5, timesteps=timesteps, signed=signed,
                             membrane_init=init)
    pos, neg = torch.rand(5, generator=generator) + 0.1, torch.rand(5, generator=generator) * 0.3 + 0.05
    site.neuron.threshold_pos.copy_(pos)
    site.neuron.threshold_neg.copy_(neg)
    y = torch.randn(64, 5, generator=generator) * 0.8  # constant drive per neuron, clipped ones included
    y[:5] = pos  # exactly at the clip
    modelled = site_quantise(y, pos, neg, timesteps, init, signed)
    with torch.no_grad():
        twin = site.twin(y)
        stepped = site(y.repeat(timesteps, 1)).unflatten(0, (timesteps, -1)).mean(dim=0)
    assert torch.equal(modelled, twin)
    torch.testing.assert_close(stepped, modelled, rtol=0, atol=1e-6)


def test_auto_granularity_keeps_per_channel_only_where_it_wins():
    torch.manual_seed(2)
    alike = stats_from(torch.randn(4, 2000), activation="silu")  # one distribution: a layer clip is as good
    # narrow channels around different levels: a layer clip's coarse steps miss all of them
    scaled = stats_from(torch.randn(4, 2000) * 0.1 + torch.tensor([[0.5], [1.0], [2.0], [4.0]]), activation="silu")
    for stats, expected in ((alike, "layer"), (scaled, "channel")):
        auto = site_thresholds(stats, 4, granularity="auto")
        chosen = site_thresholds(stats, 4, granularity=expected)
        assert torch.equal(auto.pos, chosen.pos) and torch.equal(auto.shift, chosen.shift)

"""Neuron arithmetic on hand-computed cases."""

import pytest
import torch
from sdm.converter.spiking.neurons import SignedIFNode


def run(node: SignedIFNode, currents: list[float], grad: bool = False) -> list[float]:
    node.reset()
    x = torch.tensor(currents).view(-1, 1, 1)
    with torch.set_grad_enabled(grad):
        return node(x).flatten().tolist()


def make(signed: bool, pos: float = 1.0, neg: float = 1.0, init: float = 0.5) -> SignedIFNode:
    node = SignedIFNode(1, signed=signed, membrane_init=init)
    node.threshold_pos.fill_(pos)
    node.threshold_neg.fill_(neg)
    return node


@pytest.mark.parametrize("grad", [False, True])
def test_unsigned_soft_reset_with_half_threshold_start(grad):
    # membrane starts at 0.5: 0.5+0.6=1.1 fires (->0.1), 0.1+0.6=0.7, 0.7+0.6=1.3 fires (->0.3)
    assert run(make(signed=False), [0.6, 0.6, 0.6], grad) == pytest.approx([1.0, 0.0, 1.0])


@pytest.mark.parametrize("grad", [False, True])
def test_zero_initial_membrane_truncates(grad):
    # starting at 0: 0.6, 1.2 fires (->0.2), 0.8 -> total 1 spike for 1.8 of input
    assert run(make(signed=False, init=0.0), [0.6, 0.6, 0.6], grad) == pytest.approx([0.0, 1.0, 0.0])


@pytest.mark.parametrize("grad", [False, True])
def test_spikes_carry_their_threshold(grad):
    # 1.5 reaches half of 2.0 and fires 2.0 (-> -0.5); -0.5 + 0.4 stays below
    assert run(make(signed=False, pos=2.0), [1.5, 0.4], grad) == pytest.approx([2.0, 0.0])


@pytest.mark.parametrize("grad", [False, True])
def test_signed_neuron_takes_back_an_early_spike(grad):
    # +0.6 fires (membrane -> -0.4 relative to the start), -1.0 gives -1.4: a -1 spike (-> -0.4),
    # +0.2 leaves -0.2: the total input -0.2 rounds to 0 and so does the total output.
    assert run(make(signed=True), [0.6, -1.0, 0.2], grad) == pytest.approx([1.0, -1.0, 0.0])


@pytest.mark.parametrize("grad", [False, True])
def test_signed_neuron_negative_threshold_is_separate(grad):
    # negative spikes weigh 0.25: -0.2 reaches -0.125 and fires -0.25, leaving +0.05
    assert run(make(signed=True, neg=0.25), [-0.2, 0.0, -0.1], grad) == pytest.approx([-0.25, 0.0, 0.0])


def test_unsigned_neuron_never_fires_negative():
    assert run(make(signed=False), [-3.0, -3.0], False) == [0.0, 0.0]


def test_reset_clears_membrane_and_count_matches_input():
    node = make(signed=False)
    run(node, [0.3] * 10)
    assert torch.is_tensor(node.v)
    node.reset()
    assert node.v == 0.0
    # 10 steps of 0.3 = 3.0 of charge: exactly 3 spikes when rounding
    assert sum(run(node, [0.3] * 10)) == pytest.approx(3.0)


def test_fast_inference_path_equals_autograd_path():
    torch.manual_seed(0)
    for signed in (True, False):
        node = SignedIFNode(4, signed=signed)
        node.threshold_pos.uniform_(0.5, 2.0)
        node.threshold_neg.uniform_(0.1, 0.5)
        x = torch.randn(6, 3, 4, 5, 5)
        node.reset()
        with torch.no_grad():
            fast = node(x)
        node.reset()
        slow = node(x.clone().requires_grad_(True)).detach()
        node.reset()
        in_place = node.inference_steps(x.clone(), in_place=True)
        assert torch.equal(fast, slow) and torch.equal(in_place, slow)


def test_threshold_scale_scales_spikes():
    node = make(signed=False, pos=1.0)
    node.threshold_scale = 2.0
    assert run(node, [1.5, 0.4]) == pytest.approx([2.0, 0.0])


# --- exact neurons: the step count equals the quantised twin's, for every drive -----------------

from sdm.converter.spiking.layers import SpikingActivation  # noqa: E402


def _drives(timesteps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Input currents [T, 64, 4] of the kinds that defeat a one-spike-per-step neuron."""
    shape = (timesteps, 64, 4)
    late = torch.randn(shape, generator=generator) * 0.1
    late[-1] += torch.randn(shape[1:], generator=generator) * 3.0 * timesteps  # large increment at the end
    swing = torch.randn(shape, generator=generator) * 2.0
    swing *= torch.tensor([(-1.0) ** t for t in range(timesteps)]).view(-1, 1, 1) * 4.0  # sign swings
    constant = (torch.rand(shape[1:], generator=generator) * 3 - 1.0).expand(shape).contiguous()
    walk = torch.randn(shape, generator=generator).cumsum(0)
    return {"late": late, "swing": swing, "constant": constant, "walk": walk}


def _exact_site(signed: bool, timesteps: int, generator: torch.Generator, init: float = 0.5,
                emission: tuple[int, int, bool] = (0, 0, False)) -> SpikingActivation:
    site = SpikingActivation("s", torch.nn.Identity(), torch.nn.SiLU(), 4, timesteps=timesteps, signed=signed,
                             membrane_init=init, emission=emission)
    site.neuron.threshold_pos.copy_(torch.rand(4, generator=generator) + 0.2)
    site.neuron.threshold_neg.copy_(torch.rand(4, generator=generator) * 0.3 + 0.05)
    site.output_shift.copy_(torch.randn(4, generator=generator) * 0.01)
    return site


def _net_counts(site: SpikingActivation, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ON, OFF) counts after T steps, read off the emitted spikes (float64: no rounding doubt)."""
    total = spikes.double().sum(dim=0)  # sites emit spikes only (bias correction folded downstream)
    theta_pos, theta_neg = (t.double() * site.neuron.threshold_scale for t in
                            (site.neuron.threshold_pos, site.neuron.threshold_neg))
    return (total.clamp_min(0) / theta_pos).round(), ((-total).clamp_min(0) / theta_neg).round()


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("schedule", ["spread", "eager", "hysteresis", "deferred"])
def test_exact_site_count_equals_the_twin_for_every_drive_and_T(signed, grad, schedule):
    generator = torch.Generator().manual_seed(11)
    for timesteps in range(1, 17):
        emission = {"spread": (0, 0, True), "eager": (0, 0, False), "hysteresis": (timesteps % 3, 1 + timesteps % 2, False),
                    "deferred": (timesteps - 1, 0, False)}
        site = _exact_site(signed, timesteps, generator, init=0.5 if timesteps % 2 else 0.0,
                           emission=emission[schedule])
        site.neuron.threshold_scale = 1.0 if timesteps % 3 else 0.9  # threshold guidance included
        for kind, current in _drives(timesteps, generator).items():
            with torch.set_grad_enabled(grad):
                spikes = site(current.flatten(0, 1).requires_grad_(grad)).detach().unflatten(0, (timesteps, -1))
                mean = site.mean_input(current.flatten(0, 1))
                with torch.no_grad():
                    on, off = site.neuron.counts(site.drive(mean) * float(timesteps), timesteps)
                    twin = site.twin(mean)
            got_on, got_off = _net_counts(site, spikes)
            assert torch.equal(got_on, on.double()), (timesteps, kind)
            if signed:
                assert torch.equal(got_off, off.double()), (timesteps, kind)
            torch.testing.assert_close(spikes.mean(dim=0), twin, rtol=0, atol=1e-5)


def test_exact_neuron_takes_back_only_its_own_spikes_and_counts_every_unit():
    site = SpikingActivation("s", torch.nn.Identity(), torch.nn.Identity(), 4, timesteps=6, signed=True,
                             membrane_init=0.5)
    site.neuron.threshold_neg.fill_(0.25)
    site.neuron.monitor = True
    # running means 3, 1.5, 1, -9.25, -7.4, -6.2, clipped to [-0.25, 1]: cumulative drive 1, 2, 3,
    # -1, -1.25, -1.5 -> ON counts 1, 2, 3, 0, 0, 0 and OFF counts 0, 0, 0, 4, 5, 6: at step 4 the
    # neuron takes back its 3 ON spikes and fires 4 OFF spikes in one graded step
    current = torch.tensor([3.0, 0.0, 0.0, -40.0, 0.0, 0.0]).view(6, 1, 1).expand(6, 1, 4).contiguous()
    with torch.no_grad():
        spikes = site(current.flatten(0, 1)).unflatten(0, (6, -1))[:, 0, 0]
    assert spikes.tolist() == [1.0, 1.0, 1.0, -4.0, -0.25, -0.25]
    assert float(spikes.sum()) == -0.25 * 6  # the twin's level for mean -6.2: -theta_neg
    assert site.neuron.spike_count == 4 * (1 + 1 + 1 + 3 + 4 + 1 + 1)  # every unit of every graded spike
    assert site.neuron.neuron_steps == 6 * 4


def test_emission_schedules_hold_back_spikes_and_end_on_the_same_count():
    # the worked example above: ON targets 1, 2, 3, 0, 0, 0 and OFF targets 0, 0, 0, 4, 5, 6
    current = torch.tensor([3.0, 0.0, 0.0, -40.0, 0.0, 0.0]).view(6, 1, 1).expand(6, 1, 4).contiguous()
    wobble = torch.tensor([0.6, 1.6, -1.0, 1.6, 0.0, 0.0]).view(6, 1, 1).expand(6, 1, 4).contiguous()
    emitted = {}
    schedules = [(0, 0, False), (2, 0, False), (0, 1, False), (5, 0, False), (0, 0, True)]
    for emission in schedules:
        site = SpikingActivation("s", torch.nn.Identity(), torch.nn.Identity(), 4, timesteps=6, signed=True,
                                 membrane_init=0.5, emission=emission)
        site.neuron.threshold_neg.fill_(0.25)
        site.neuron.monitor = True
        with torch.no_grad():
            emitted[emission] = [site(c.flatten(0, 1)).unflatten(0, (6, -1))[:, 0, 0].tolist() for c in (current, wobble)]
        emitted[emission].append(site.neuron.spike_count / 4)
    eager, late, margin, deferred, spread = schedules
    assert emitted[eager][0] == [1.0, 1.0, 1.0, -4.0, -0.25, -0.25]
    assert emitted[late][0] == [0.0, 0.0, 3.0, -4.0, -0.25, -0.25]  # silent for two steps, then eager
    assert emitted[deferred][0] == [0.0, 0.0, 0.0, 0.0, 0.0, -1.5]  # deferred: |count| units, at step T only
    # spread: the final OFF count 6 as one binary spike per step; wobble's final ON count 3 as
    # round(3 t / 6) by step t: 1, 1, 2, 2, 3, 3 (halves up)
    assert emitted[spread][0] == [-0.25] * 6
    assert emitted[spread][1] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # wobble: running means 0.6, 1.1, 0.4, 0.7, 0.56, 0.47 -> ON targets 1, 2, 1, 3, 3, 3: eager takes
    # one spike back at step 3 and re-emits it; a margin of 1 keeps it
    assert emitted[eager][1] == [1.0, 1.0, -1.0, 2.0, 0.0, 0.0]
    assert emitted[margin][1] == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    for got in emitted.values():
        assert sum(got[0]) == -1.5 and sum(got[1]) == 3.0  # the same final counts: the twin's
    assert [emitted[e][2] for e in schedules] == [12 + 5, 12 + 3, 12 + 3, 6 + 3, 6 + 3]


@pytest.mark.parametrize("bound", [1, 2])
def test_payload_bound_limits_spikes_per_step_and_carries_the_rest(bound):
    timesteps = 8
    site = SpikingActivation("s", torch.nn.Identity(), torch.nn.SiLU(), 4, timesteps=timesteps, signed=True,
                             membrane_init=0.5, max_payload=bound)
    exact = SpikingActivation("s", torch.nn.Identity(), torch.nn.SiLU(), 4, timesteps=timesteps, signed=True,
                              membrane_init=0.5)
    current = _drives(timesteps, torch.Generator().manual_seed(5))["swing"].flatten(0, 1)
    with torch.no_grad():
        bounded, ideal = site(current), exact(current)
    changes = bounded.unflatten(0, (timesteps, -1))  # thresholds 1: values are count changes
    assert changes.abs().max() <= 2 * bound  # ON and OFF side each move at most `bound`
    assert not torch.equal(bounded, ideal)
    constant = torch.full((timesteps * 2, 4, 1), 0.6)
    with torch.no_grad():
        assert torch.equal(site(constant).sum(0), exact(constant).sum(0))  # a steady drive needs one per step


def test_single_spike_neuron_lags_where_the_exact_one_does_not():
    generator = torch.Generator().manual_seed(3)
    timesteps = 8
    current = _drives(timesteps, generator)["late"]
    old = SpikingActivation("s", torch.nn.Identity(), torch.nn.SiLU(), 4, timesteps=timesteps, signed=True,
                            membrane_init=0.5, neuron="single-spike")
    new = SpikingActivation("s", torch.nn.Identity(), torch.nn.SiLU(), 4, timesteps=timesteps, signed=True,
                            membrane_init=0.5)
    mean = new.mean_input(current.flatten(0, 1))
    with torch.no_grad():
        twin = new.twin(mean)
        lag = (old(current.flatten(0, 1)).unflatten(0, (timesteps, -1)).mean(0) - twin).abs().max()
        exact = (new(current.flatten(0, 1)).unflatten(0, (timesteps, -1)).mean(0) - twin).abs().max()
    assert lag > 0.1 and exact < 1e-6

"""Neuron arithmetic on hand-computed cases."""

import pytest
import torch

from sdm.converter.neurons import SignedIFNode


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

"""What the receiver hooks count: a hand-counted layer in every counter, and delta coding at every level."""

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.spiking.operations import SPIKE_DRIVEN, classify_layers
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.residual import feeding_site
from sdm.eval.metrics.activity import ActivityMonitor
from sdm.eval.metrics.costs import int_add_pj, int_mult_pj
from torch import nn


def test_each_convention_on_a_hand_counted_layer(tiny_source, tiny_record):
    """One spike-driven 3x3 convolution (stride 1, padding 1) fed by hand-made spikes at T = 2:
    a binary spike at the centre (9 targets per output channel) at step 1, a graded spike of 2
    units at a corner (4 targets) at step 2."""
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    kinds = classify_layers(snn)
    modules = dict(snn.unet.named_modules())
    path = next(p for p, (kind, _) in kinds.items() if kind == SPIKE_DRIVEN and isinstance(modules[p], nn.Conv2d)
                and modules[p].kernel_size == (3, 3) and modules[p].stride == (1, 1) and modules[p].padding == (1, 1))
    conv, site = modules[path], feeding_site(modules[path])
    theta = site.neuron.threshold_pos
    x = torch.zeros(2, conv.in_channels, 5, 5)  # [T * B, C, H, W] with B = 1
    x[0, 0, 2, 2] = theta[0]
    x[1, 1, 0, 0] = 2 * theta[1]
    monitor = ActivityMonitor(snn)
    monitor._layer_hook(path)(conv, (x,))
    activity, targets = monitor.activity, conv.out_channels
    assert activity.layer_acs[path] == pytest.approx((1 * 9 + 2 * 4) * targets)  # units x AC
    assert activity.layer_events[path] == pytest.approx((9 + 4) * targets)  # two events
    binary, graded = int_add_pj(32), int_mult_pj(2, 8) + int_add_pj(32)  # 2 units: 2 payload bits
    assert activity.layer_event_pj[path] == pytest.approx((9 * binary + 4 * graded) * targets)
    assert activity.layer_nonzero_macs[path] == pytest.approx((9 + 4) * targets)  # two non-zero twin activations
    assert dict(activity.step_units) == {0: 1.0, 1: 2.0} and activity.last_step_unit_fraction == pytest.approx(2 / 3)
    assert activity.max_payload == 2


@pytest.mark.parametrize("level", ["hybrid", "residual", "full"])
def test_delta_coding_counts_the_first_evaluation_in_full_and_then_less(tiny_source, tiny_record, level):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2, spiking=level))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    counted = {}
    for coding in ("rate", "delta"):
        snn.set_coding(coding)
        per_call = []
        for t in (600, 590):  # two evaluations of one trajectory: nearly the same input
            with torch.no_grad(), ActivityMonitor(snn) as activity:
                snn(x, torch.tensor([t, t]))
            per_call.append(sum(activity.layer_acs.values()))
        counted[coding] = per_call
    assert counted["delta"][0] == pytest.approx(counted["rate"][0])
    assert counted["delta"][1] < counted["rate"][1]


def test_a_take_back_is_one_unit(tiny_source, tiny_record):
    """Binary spikes with take-backs (eager emission, one unit per step and side): a take-back of
    -theta_pos is one ON unit, not |theta_pos| / theta_neg OFF units (what its value alone suggests)."""
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4, emission="eager", max_payload=1))
    with torch.no_grad(), ActivityMonitor(snn) as activity:
        snn(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([900, 600, 300, 20]))
    assert activity.max_payload <= 2  # at most one unit per side and step
    assert not any(n.monitor for n in snn.neurons().values())  # the monitor flags are restored

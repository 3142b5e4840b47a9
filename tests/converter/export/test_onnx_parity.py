"""The pinned parity check: PyTorch run on the exported spikes agrees; a decision away from a tie is caught."""

import torch
from sdm.converter.convert import convert
from sdm.converter.export.onnx_parity import TIE_TOLERANCE, pinned_run
from sdm.converter.spiking.policy import ConversionPolicy


def _own_spikes(snn, x, t):
    outputs = []
    handles = [site.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone())) for site in snn.sites().values()]
    with torch.no_grad():
        eps = snn(x, t).sample
    for handle in handles:
        handle.remove()
    return eps, outputs


def test_pinned_parity_accepts_own_spikes_and_catches_a_flip_away_from_a_tie(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3))
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([100, 600])
    eps, spikes = _own_spikes(snn, x, t)
    pinned, stats = pinned_run(snn, x, t, [s.numpy() for s in spikes])
    assert torch.equal(torch.from_numpy(pinned), eps) and stats["disagreeing_spikes"] == 0
    # flip one neuron's decision at the first step of the first site: far from any tie
    site = next(iter(snn.sites().values()))
    forced = [s.numpy().copy() for s in spikes]
    theta = float(site.neuron.threshold_pos[0])
    forced[0][0, 0, 0, 0] += theta if forced[0][0, 0, 0, 0] <= float(site.output_shift[0]) else -theta
    _, stats = pinned_run(snn, x, t, forced)
    assert stats["disagreeing_spikes"] >= 1 and stats["worst_tie_distance"] > TIE_TOLERANCE

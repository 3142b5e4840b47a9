"""Delta coding across denoising steps: what is sent is the change, what is decoded is exact.

The coder itself over hand-made emissions; then the model over whole sampling trajectories of
every sampler, with the batch split into passes: outputs equal rate coding bit for bit, the
first evaluation of each sample is charged in full, a new sample starts from silence again.
"""

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.spiking.delta import CodingError, DeltaState, TrajectoryTracker, in_slot
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.diffusion import run_trajectory
from sdm.core.settings import SAMPLERS


def test_the_coder_sends_changes_and_decodes_the_emissions_exactly():
    state = DeltaState()
    first = [torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    second = [torch.tensor([[0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    assert all(torch.equal(d, e) for d, e in zip(state.code(first), first))
    assert state.events.tolist() == [[1.0, 1.0, 2.0]]  # from silence: everything is sent
    assert all(torch.equal(d, e) for d, e in zip(state.code(second), second))
    assert state.events.tolist() == [[1.0, 1.0, 1.0]]  # |0-0|+|0-1|, |2-1|+|0-0|, |2-2|+|1-0|
    with in_slot(5):  # another pass slot has its own predecessor
        state.code(second)
        assert state.events.tolist() == [[0.0, 2.0, 3.0]]
    state.drop(0)
    state.code(second)
    assert state.events.tolist() == [[0.0, 2.0, 3.0]]


def test_a_trajectory_continues_while_its_timesteps_fall():
    tracker = TrajectoryTracker()
    assert not tracker.continues(0, torch.tensor([900, 900]))
    assert tracker.continues(0, torch.tensor([700, 700]))
    assert not tracker.continues(0, torch.tensor([700, 700]))  # the same t again: a new evaluation series
    assert not tracker.continues(0, torch.tensor([500]))  # another batch
    assert not tracker.continues(0, torch.tensor([900]))  # back up: a new sample


def _trajectory(snn, source, noise, sampler, coding, steps=4):
    """Model outputs and spike counts (as the monitor sees them) of every evaluation."""
    snn.set_coding(coding)
    snn.set_monitor(True)
    outputs, sent = [], []

    def eps(x, t):
        before = sum(n.spike_count for n in snn.neurons().values())
        out = snn(x, t).sample
        outputs.append(out)
        sent.append(sum(n.spike_count for n in snn.neurons().values()) - before)
        return out

    with torch.no_grad():
        run_trajectory(eps, noise, sampler, source.scheduler_config, steps, generator=torch.Generator().manual_seed(1))
    snn.set_monitor(False)
    return outputs, sent


@pytest.mark.parametrize("emission", ["spread", "deferred", "eager"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_delta_coding_decodes_every_evaluation_of_a_trajectory_exactly(tiny_source, tiny_record, sampler, emission):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3, emission=emission))
    snn.set_inputs_per_pass(2)  # 3 samples: passes of 2 and 1, each with its own predecessor
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    rate, rate_sent = _trajectory(snn, tiny_source, noise, sampler, "rate")
    delta, delta_sent = _trajectory(snn, tiny_source, noise, sampler, "delta")
    assert all(torch.equal(a, b) for a, b in zip(rate, delta))
    assert delta_sent[0] == rate_sent[0] > 0  # the first evaluation is charged in full
    if emission != "eager":  # eager's per-step wobble can change more than its counts do (a tiny random model)
        assert sum(delta_sent[1:]) < sum(rate_sent[1:])  # later ones send changes only


def test_what_is_sent_does_not_depend_on_how_the_batch_is_split(tiny_source, tiny_record):
    """Each sample is coded against its own predecessor, in whichever pass it runs."""
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    sent = {}
    for inputs in (1, 3):
        snn.set_inputs_per_pass(inputs)
        sent[inputs] = _trajectory(snn, tiny_source, noise, "ddim", "delta")[1]
    assert sent[1] == sent[3]


def test_a_new_sample_starts_from_silence(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    _, first = _trajectory(snn, tiny_source, noise, "ddim", "delta")
    snn.set_monitor(True)  # the same model, without reset_coding_state: t jumps back up
    with torch.no_grad():
        run_trajectory(lambda x, t: snn(x, t).sample, noise, "ddim", tiny_source.scheduler_config, 4)
    assert sum(n.spike_count for n in snn.neurons().values()) == sum(first)


def test_delta_coding_refuses_what_it_cannot_code(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    with pytest.raises(CodingError, match="unknown coding"):
        snn.set_coding("burst")
    snn.set_coding("delta")
    with pytest.raises(CodingError, match="closed form"):
        snn.set_simulation("closed-form")
    snn.set_coding("rate")
    snn.set_simulation("closed-form")
    with pytest.raises(CodingError, match="closed form"):
        snn.set_coding("delta")
    single = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2, neuron="single-spike"))
    with pytest.raises(CodingError, match="exact neurons"):
        single.set_coding("delta")

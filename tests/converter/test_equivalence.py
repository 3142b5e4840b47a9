"""The equivalence measurement: exact neurons agree with the twin neuron by neuron; old ones don't."""

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.equivalence import ProbeRecorder, compare_simulations, equivalence_section
from sdm.converter.spiking.policy import ConversionPolicy


@pytest.mark.parametrize("policy", [ConversionPolicy(timesteps=1), ConversionPolicy(timesteps=2, threshold_scale=0.9),
                                    ConversionPolicy(timesteps=4), ConversionPolicy(timesteps=8, granularity="layer"),
                                    ConversionPolicy(timesteps=4, negative_lobe="relu", bias_correction=False)],
                         ids=lambda p: f"T{p.timesteps}-{p.negative_lobe}")
def test_exact_neurons_count_what_the_twin_counts(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy).double()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    result = compare_simulations(snn, x, torch.tensor([950, 500, 50]))
    tally = result["tally"]
    assert tally.neurons > 0 and tally.differ == 0 and tally.pinned_differ == 0
    assert float(result["eps_relative_difference"].max()) < 1e-9
    assert snn.simulation == "steps" and snn.inputs_per_pass is None  # restored


def test_single_spike_neurons_differ_from_their_twin_and_fire_both_signs(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=8, neuron="single-spike"))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    summary = compare_simulations(snn, x, torch.tensor([700, 300]))["tally"].summary()
    assert summary["pinned_count_differs_fraction"] > 0.01 and summary["both_signs_fraction"] > 0
    assert summary["site_mse_snn_over_twin"] > 1.0


def test_report_section_from_probe_inputs(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    recorder = ProbeRecorder(lambda x, t: snn(x, t).sample, calls={0, 2})
    with torch.no_grad():
        for t in (900, 600, 300):
            recorder(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(t)), torch.tensor(t))
    assert [int(t[0]) for _, t in recorder.inputs] == [900, 300]
    section = equivalence_section(snn, recorder.inputs, time_ratio=0.3)
    assert section["probe_inputs"] == 4 and section["probe_timesteps"] == [300, 900]
    assert section["pinned_count_differs_fraction"] == 0.0
    assert section["count_differs_fraction"] == section["count_differs_ties_fraction"]  # float32: ties only, if any
    assert section["largest_eps_relative_difference"] < 1e-3 and section["closed_form_over_steps_time"] == 0.3


def test_neuron_table_rows_on_recorded_inputs(tiny_source, tiny_record):
    from sdm.converter.equivalence import neuron_table, record_inputs_at

    t = int(tiny_record.input_timesteps[0])
    probes = [record_inputs_at(tiny_record.inputs, tiny_record.input_timesteps, t, 2)]
    models = {name: convert(tiny_source, tiny_record, ConversionPolicy(timesteps=8, neuron=name))
              for name in ("single-spike", "exact")}
    old, new = neuron_table(models, probes)
    assert new["pinned_count_differs_fraction"] == 0.0 and old["pinned_count_differs_fraction"] > 0
    assert new["spikes_per_neuron"] > 0 and old["spikes_per_neuron"] > 0
    with pytest.raises(ValueError, match="no inputs at t = 12345"):
        record_inputs_at(tiny_record.inputs, tiny_record.input_timesteps, 12345, 2)

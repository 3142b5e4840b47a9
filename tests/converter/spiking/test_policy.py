"""The conversion policy (converter/spiking/policy.py): every option is checked when the policy is
built, it round-trips through the dict a converted folder saves, and a policy saved by an earlier
version reads back with what its missing options meant then (which is not always today's default)."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, fields

import pytest
from sdm.converter.spiking.policy import LEGACY_EMISSION, ConversionPolicy, PolicyError

# Not one option at its default, so a round trip that drops or resets one shows.
NON_DEFAULT = dict(timesteps=6, neuron="exact", max_payload=2, emission="hysteresis", emission_margin=2,
                   emission_onset=2, negative_lobe="relu", norm="frozen", attention="instant", membrane_init=0.25,
                   input_encoding="spikes", threshold_method="percentile", percentile=99.0, granularity="auto",
                   bias_correction=False, layerwise=True, matching_inputs=4, threshold_scale=1.5,
                   off_threshold_scale=1.0, spiking="full", attention_probabilities="spiking")


def test_a_policy_saved_before_levels_existed_is_hybrid():
    saved = ConversionPolicy().to_dict()
    del saved["spiking"]
    assert ConversionPolicy.from_saved(saved).spiking == "hybrid"
    del saved["emission"], saved["attention_probabilities"]  # before schedules: every step; before P sites: analog P
    legacy = ConversionPolicy.from_saved(saved)
    assert legacy.emission == "eager" and legacy.attention_probabilities == "analog"
    with pytest.raises(PolicyError, match="spiking must be one of"):
        ConversionPolicy(spiking="everything")


def test_policy_records_the_neuron_and_refuses_bad_values():
    assert ConversionPolicy().to_dict()["neuron"] == "exact"
    with pytest.raises(PolicyError, match="neuron must be one of"):
        ConversionPolicy(neuron="burst")
    with pytest.raises(PolicyError, match="max_payload"):
        ConversionPolicy(max_payload=0)


def test_every_option_round_trips_through_the_saved_json():
    policy = ConversionPolicy(**NON_DEFAULT)
    assert set(NON_DEFAULT) == {f.name for f in fields(ConversionPolicy)}
    saved = json.loads(json.dumps(policy.to_dict()))  # what config.json holds
    assert ConversionPolicy.from_dict(saved) == policy
    assert ConversionPolicy.from_saved(saved) == policy


def test_saved_values_win_over_the_legacy_defaults():
    """The default emission is now "spread" and a saved policy without the option reads as "eager":
    `from_saved` fills only what is missing, so a new folder saved with "spread" stays spread."""
    assert ConversionPolicy().emission == "spread" and LEGACY_EMISSION == "eager"
    saved = ConversionPolicy().to_dict()
    assert ConversionPolicy.from_saved(saved) == ConversionPolicy()
    del saved["emission"]
    legacy = ConversionPolicy.from_saved(saved)
    assert legacy == ConversionPolicy(emission="eager")  # nothing else changed


def test_unknown_options_are_refused_by_name():
    saved = {**ConversionPolicy().to_dict(), "colour": "red", "burst": 2}
    for read in (ConversionPolicy.from_dict, ConversionPolicy.from_saved):
        with pytest.raises(PolicyError, match="^unknown conversion options: burst, colour$"):
            read(saved)


@pytest.mark.parametrize("options, message", [
    (dict(timesteps=0), "timesteps must be an integer >= 1, got 0"),
    (dict(timesteps=2.0), "timesteps must be an integer >= 1, got 2.0"),
    (dict(emission="late"), "emission must be one of spread, eager, hysteresis, deferred, got 'late'"),
    (dict(emission_margin=-1), "emission_margin must be an integer >= 0, got -1"),
    (dict(emission_onset=True), "emission_onset must be an integer >= 0, got True"),
    (dict(negative_lobe="gelu"), "negative_lobe must be one of signed, relu"),
    (dict(attention_probabilities="binary"), "attention_probabilities must be one of analog, spiking"),
    (dict(percentile=0.0), "percentile must be in (0, 100], got 0.0"),
    (dict(membrane_init=1.0), "membrane_init must be in [0, 1), got 1.0"),
    (dict(matching_inputs=0), "matching inputs must be >= 1, got 0"),
    (dict(threshold_scale=0.0), "threshold scale must be > 0, got 0.0"),
    (dict(off_threshold_scale=-1.0), "off threshold scale must be > 0, got -1.0"),
    (dict(layerwise=True, off_threshold_scale=2.0), "layer-wise matching refits them"),
    (dict(timesteps=4, emission="deferred", max_payload=2),
     "deferred emission sends in the last 1 of 4 steps: --max-payload 2 can never carry a count of 4"),
], ids=lambda value: None if isinstance(value, str) else ",".join(value))
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(PolicyError) as error:
        ConversionPolicy(**options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_replace_checks_the_new_policy_and_keeps_the_old_one():
    policy = ConversionPolicy(timesteps=4, emission="eager")
    assert policy.replace(emission="deferred") == ConversionPolicy(timesteps=4, emission="deferred")
    with pytest.raises(PolicyError, match="timesteps must be"):
        policy.replace(timesteps=0)
    with pytest.raises(PolicyError, match="unknown conversion options: colour"):
        policy.replace(colour="red")
    with pytest.raises(FrozenInstanceError):
        policy.timesteps = 8
    assert policy == ConversionPolicy(timesteps=4, emission="eager")


def test_emission_schedules():
    """(onset, margin, spread) per emission: only hysteresis reads its onset and margin."""
    options = dict(timesteps=6, emission_onset=2, emission_margin=3)
    schedules = {emission: ConversionPolicy(emission=emission, **options).emission_schedule
                 for emission in ("spread", "eager", "hysteresis", "deferred")}
    assert schedules == {"spread": (0, 0, True), "eager": (0, 0, False), "hysteresis": (2, 3, False),
                         "deferred": (5, 0, False)}


def test_a_bounded_payload_is_refused_only_where_it_cannot_carry_the_count():
    """Onset o of T steps leaves T - o steps of at most max_payload units each for a count up to T."""
    ConversionPolicy(timesteps=4, emission="hysteresis", emission_onset=2, max_payload=2)  # 2 x 2 >= 4
    with pytest.raises(PolicyError, match="--max-payload 1 can never carry a count of 4"):
        ConversionPolicy(timesteps=4, emission="hysteresis", emission_onset=2, max_payload=1)  # 2 x 1 < 4
    ConversionPolicy(timesteps=4, emission="spread", max_payload=1)  # one unit per step: always enough
    ConversionPolicy(timesteps=4, emission="deferred", max_payload=1, neuron="single-spike")  # no count to schedule

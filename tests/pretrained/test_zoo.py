"""The model zoo: names and aliases resolve to folders; the listing reads real configs."""

from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL, available_models, resolve_model_name, zoo_table


def test_names_and_aliases_resolve_to_the_same_model():
    assert DEFAULT_MODEL in available_models()
    assert resolve_model_name("cifar10-ch64") == resolve_model_name(DEFAULT_MODEL) is not None
    assert resolve_model_name("no-such-model") is None
    assert load_source_model("cifar10-ch64").describe()["fingerprint"] == load_source_model(DEFAULT_MODEL).describe()["fingerprint"]


def test_listing_counts_parameters_and_never_invents_an_fid():
    table = zoo_table()
    assert "| ddpm-cifar10-ch64 | cifar10-ch64 | 32 | 8.95 M |" in table
    assert "not measured" in table

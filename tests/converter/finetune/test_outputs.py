"""What a fine-tuning run leaves (converter/finetune/outputs.py) on the tiny model: a converted-model
folder that loads back as the trained model, with its checkpoint, log and summary (and p[t] for a
TSM model only), written atomically: an existing folder is replaced whole or not at all."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
from sdm.converter.convert import convert
from sdm.converter.finetune.outputs import CHECKPOINT, LOSS_COLUMNS, plot_tsm, write_outputs
from sdm.converter.folder import load_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import enable_tsm, spiking_sites, tsm_values

from tests.conftest import TWIN_INPUTS, TWIN_TIMESTEPS

PNG = b"\x89PNG\r\n\x1a\n"
LOSSES = [[1.0, 0.5, 0.5, 0.0, 0.25], [2.0, 0.4, 0.4, 0.0, 0.125]]
FINAL_STATE = {"format": "test", "step": 2, "trainable": {"p": torch.arange(3.0)}}


@pytest.fixture(scope="module")
def snn(tiny_source, tiny_record):
    return convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))


def with_tsm(snn):
    """A copy with learned-looking p[t] (not all ones)."""
    tsm = copy.deepcopy(snn)
    enable_tsm(tsm)
    with torch.no_grad():
        for i, site in enumerate(spiking_sites(tsm).values()):
            site.tsm.copy_(torch.tensor([1.0 + 0.01 * i, 0.9]))
    return tsm


def test_a_tsm_run_leaves_a_folder_that_loads_back_as_the_trained_model(snn, tiny_record, tmp_path):
    tsm, out = with_tsm(snn), tmp_path / "run"
    values = tsm_values(tsm)
    summary = {"steps": 2, "tsm_mean_per_step": [1.05, 0.9]}
    write_outputs(out, tsm, tiny_record, summary, values, LOSSES, FINAL_STATE)
    loaded = load_converted(out)
    with torch.no_grad():
        assert torch.equal(loaded(TWIN_INPUTS, TWIN_TIMESTEPS).sample, tsm(TWIN_INPUTS, TWIN_TIMESTEPS).sample)
    assert tsm_values(loaded) == values
    assert json.loads((out / "tsm.json").read_text()) == {"timesteps": 2, "mean": [1.05, 0.9], "sites": values}
    assert (out / "tsm.png").read_bytes().startswith(PNG)
    assert json.loads((out / "finetune.json").read_text()) == summary
    assert json.loads((out / "operations.json").read_text())  # the tuned model's operation counts
    log = list(csv.reader((out / "loss_log.csv").open()))
    assert log == [LOSS_COLUMNS, ["1", "0.5", "0.5", "0", "0.25"], ["2", "0.4", "0.4", "0", "0.125"]]
    state = torch.load(out / CHECKPOINT, weights_only=True)
    assert state["step"] == 2 and torch.equal(state["trainable"]["p"], FINAL_STATE["trainable"]["p"])
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left


def test_a_qat_run_replaces_the_folder_and_has_no_tsm_files(snn, tiny_record, tmp_path):
    out, tsm = tmp_path / "run", with_tsm(snn)
    write_outputs(out, tsm, tiny_record, {"steps": 2, "tsm_mean_per_step": [1.05, 0.9]}, tsm_values(tsm), LOSSES, FINAL_STATE)
    (out / "stale.txt").write_text("from an earlier run")
    write_outputs(out, snn, tiny_record, {"steps": 2}, {}, LOSSES, FINAL_STATE)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "operations.json", "loss_log.csv", "finetune.json", CHECKPOINT} <= names
    assert not names & {"tsm.json", "tsm.png", "stale.txt"}  # the whole folder was replaced
    assert tsm_values(load_converted(out)) == {}


def test_a_failed_write_leaves_the_previous_folder_as_it_was(snn, tiny_record, tmp_path):
    out = tmp_path / "run"
    write_outputs(out, snn, tiny_record, {"steps": 1}, {}, LOSSES[:1], FINAL_STATE)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TypeError):  # the summary is written after the model: the staging folder is full by then
        write_outputs(out, snn, tiny_record, {"steps": 2, "unserialisable": object()}, {}, LOSSES, FINAL_STATE)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_plot_tsm_draws_a_single_site_too(tmp_path):
    plot_tsm({"only": [1.0, 0.8, 1.1]}, tmp_path / "tsm.png")
    assert (tmp_path / "tsm.png").read_bytes().startswith(PNG)

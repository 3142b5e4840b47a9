"""The threshold sweep: a 2x2 grid on a tiny model writes its table and plot, with a policy that matches
its neurons; bad grids are refused."""

import csv
import json

import pytest
from sdm.cli.convert import main as convert_main
from sdm.cli.sweep import main as sweep_main

from tests.conftest import make_tiny_unet


@pytest.fixture(scope="module")
def record_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    make_tiny_unet().save_pretrained(root / "ann")
    assert convert_main(["--checkpoint", str(root / "ann"), "--out", str(root / "snn"), "--calib-samples", "2",
                         "--calib-steps", "2", "--eval-samples", "0"]) == 0
    return root


def test_two_by_two_sweep_writes_table_and_plot(record_folder, tmp_path):
    out = tmp_path / "sweep"
    argv = ["--ann", str(record_folder / "ann"), "--record", str(record_folder / "snn"), "--timesteps", "2,4",
            "--scales", "0.9,1.0", "--num-samples", "2", "--steps", "2", "--out", str(out)]
    assert sweep_main(argv) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 4 and {r["timesteps"] for r in rows} == {"2", "4"}
    assert {r["threshold_scale"] for r in rows} == {"0.9", "1.0"}
    assert (out / "sweep.md").exists() and (out / "sweep_vs_threshold_scale.png").exists()
    assert (out / "sweep_vs_timesteps.png").exists()
    settings = json.loads((out / "sweep.json").read_text())["settings"]
    assert settings["num_samples"] == "2" and settings["record"] == str(record_folder / "snn")


def test_levels_sweep_writes_pareto_plot_and_per_site_rates(record_folder, tmp_path):
    out = tmp_path / "levels"
    argv = ["--ann", str(record_folder / "ann"), "--record", str(record_folder / "snn"), "--levels",
            "hybrid,residual,full", "--timesteps", "2", "--num-samples", "1", "--steps", "2", "--out", str(out)]
    assert sweep_main(argv) == 0
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["spiking"] for r in rows] == ["hybrid", "residual", "full"]
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    analog = [run["energy"]["snn"]["analog_macs"] for run in runs]
    assert analog[0] > analog[1] > analog[2]  # each level replaces analog MACs by accumulates
    assert len(runs[2]["spike_rate_per_site"]) > len(runs[1]["spike_rate_per_site"]) > len(runs[0]["spike_rate_per_site"])
    assert (out / "pareto.png").stat().st_size > 0 and (out / "spike_rates.png").stat().st_size > 0


"""`eval/bench.py` on a tiny model: every variant timed side by side, ratios and memory written."""

import json

from sdm.cli.bench import main as bench_main

from tests.conftest import make_tiny_unet


def test_times_the_ann_and_both_site_paths_and_writes_ratios(tmp_path):
    make_tiny_unet().save_pretrained(tmp_path / "ann")
    out = tmp_path / "bench"
    argv = ["--ann", str(tmp_path / "ann"), "--timesteps", "2", "--batch-sizes", "2", "--repeats", "2",
            "--threads", "1", "--tensor-ops", "--out", str(out)]
    assert bench_main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["ann", "snn-T2", "snn-T2 tensor ops"]
    assert rows[0]["over_T_x_ann"] == 1.0 and rows[0]["timesteps"] is None
    for row in rows:
        assert row["seconds_per_eval"]["min"] <= row["seconds_per_eval"]["median"] <= row["seconds_per_eval"]["max"]
        assert row["peak_mib"] is None or row["peak_mib"] > 0
    assert rows[1]["site_kernel"] == result["site_kernel_available"] and rows[2]["site_kernel"] is False
    assert "| snn-T2 tensor ops | 2 |" in (out / "bench.md").read_text()

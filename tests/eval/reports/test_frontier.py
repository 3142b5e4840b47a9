"""The frontier over finished reports: one row per SNN run, both conventions, closed form refused."""

import json

import pytest
from sdm.core.errors import SdmError
from sdm.eval.reports.frontier import frontier_rows, markdown, write_frontier


def _report(folder, runs, samples=4):
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"num_samples": samples, "runs": runs}))
    return folder


def _run(label, psnr, events, units, level="full", coding="delta"):
    return {"label": label, "timesteps": 4, "coding": coding, "policy": {"spiking": level, "emission": "spread"},
            "paired": {"psnr_db": psnr},
            "energy": {"snn_over_ann": events, "snn_over_qann_zero_skip": 2 * events, "spikes_per_synapse": 0.5,
                       "units_x_ac": {"snn_over_ann": units}}}


def test_every_run_of_every_report_is_a_point_in_both_conventions(tmp_path):
    a = _report(tmp_path / "a", [_run("T4-hybrid", 17.0, 0.3, 1.4, "hybrid"), _run("T4-full", 13.8, 0.1, 0.45)])
    b = _report(tmp_path / "b", [_run("T4-full-qat", 18.0, 0.09, 0.44)], samples=16)
    rows = frontier_rows([a, b / "report.json"])
    assert [r["point"] for r in rows] == ["a/T4-hybrid", "a/T4-full", "report.json/T4-full-qat"]
    assert [r["samples"] for r in rows] == [4, 4, 16]
    assert rows[2]["events_over_ann"] == 0.09 and rows[2]["units_over_ann"] == 0.44 and rows[1]["level"] == "full"
    table = markdown(rows).splitlines()
    assert len(table) == 2 + 3 and "| a/T4-full | 4 | full | spread | delta | 4 | 13.80 | 0.100 | 0.200 | 0.450 | 0.500 |" in table
    out = tmp_path / "frontier"
    write_frontier([a, b], out)
    assert sorted(p.name for p in out.iterdir()) == ["frontier.json", "frontier.md", "frontier_events.png",
                                                      "frontier_units.png"]
    assert json.loads((out / "frontier.json").read_text())[0]["psnr_db"] == 17.0


def test_what_is_not_a_report_or_has_no_energy_is_refused_by_name(tmp_path):
    with pytest.raises(SdmError, match="not an ann-vs-snn report"):
        frontier_rows([tmp_path])
    closed = {**_run("T4-closed", 13.8, 0.1, 0.4), "energy": {"snn_over_ann": None}}
    _report(tmp_path / "c", [closed])
    with pytest.raises(SdmError, match="T4-closed counted no spikes"):
        write_frontier([tmp_path / "c"], tmp_path / "out")
    assert not (tmp_path / "out").exists()

"""--simulation on compare and bench: the equivalence section, closed-form runs, refusals."""

import pytest


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from sdm.cli.convert import main as convert_main

    from tests.conftest import make_tiny_unet

    root = tmp_path_factory.mktemp("sim")
    make_tiny_unet().save_pretrained(root / "ann")
    fast = ["--calib-samples", "2", "--calib-steps", "2", "--eval-samples", "0"]
    assert convert_main(["--checkpoint", str(root / "ann"), "-T", "4", "--out", str(root / "snn"), *fast]) == 0
    return root


def test_compare_both_reports_the_equivalence_section(converted, tmp_path):
    import json

    from sdm.cli.compare import main as compare_main

    out = tmp_path / "report"
    argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn"), "--num-samples", "2",
            "--steps", "3", "--simulation", "both", "--out", str(out)]
    assert compare_main(argv) == 0
    run = json.loads((out / "report.json").read_text())["runs"][0]
    section = run["equivalence"]
    assert run["simulation"] == "both" and section["probe_inputs"] == 2 * 3
    assert section["pinned_count_differs_fraction"] == 0.0
    assert section["count_differs_fraction"] <= 1e-3 and section["largest_eps_relative_difference"] < 1e-2
    assert section["closed_form_over_steps_time"] > 0 and run["spike_rate"]["mean"] > 0
    assert abs(run["closed_form"]["paired"]["psnr_db"] - run["paired"]["psnr_db"]) < 5.0
    closed = tmp_path / "closed"
    argv[-3:] = ["closed-form", "--out", str(closed)]
    assert compare_main(argv) == 0
    run = json.loads((closed / "report.json").read_text())["runs"][0]
    assert run["simulation"] == "closed-form" and run["spike_rate"]["mean"] is None


def test_unknown_simulation_is_refused_in_one_line(converted, tmp_path, capsys):
    from sdm.cli.bench import main as bench_main
    from sdm.cli.compare import main as compare_main

    argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn"), "--simulation", "fast",
            "--out", str(tmp_path / "never")]
    assert compare_main(argv) == 2
    assert bench_main(["--ann", str(converted / "ann"), "--simulation", "fast", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("unknown simulation 'fast'" in line for line in err)
    assert not (tmp_path / "never").exists()


def test_bench_times_steps_and_closed_form_side_by_side(converted, tmp_path):
    import json

    from sdm.cli.bench import main as bench_main

    argv = ["--ann", str(converted / "ann"), "--timesteps", "2", "--batch-sizes", "2", "--repeats", "1",
            "--threads", "1", "--simulation", "both", "--out", str(tmp_path / "bench")]
    assert bench_main(argv) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [(r["model"], r["simulation"]) for r in rows] == [("ann", None), ("snn-T2", "steps"),
                                                           ("snn-T2 closed-form", "closed-form")]


def test_sdm_convert_fidelity_check_runs_both_simulations(converted, tmp_path, capsys):
    import json

    from sdm.cli.convert import main as convert_main

    out = tmp_path / "snn"
    argv = ["--checkpoint", str(converted / "ann"), "-T", "2", "--record", str(converted / "snn"), "--eval-samples", "2",
            "--eval-steps", "2", "--simulation", "both", "--out", str(out)]
    assert convert_main(argv) == 0
    fidelity = json.loads((out / "summary.json").read_text())["fidelity"]
    assert fidelity["simulation"] == "both" and fidelity["equivalence"]["pinned_count_differs_fraction"] == 0.0
    assert fidelity["spike_rate"] > 0 and "psnr_db" in fidelity["closed_form"]
    refused = ["--checkpoint", str(converted / "ann"), "--attention", "instant", "--simulation", "closed-form",
               "--out", str(tmp_path / "never")]
    assert convert_main(refused) == 2
    assert "attention instant" in capsys.readouterr().err and not (tmp_path / "never").exists()

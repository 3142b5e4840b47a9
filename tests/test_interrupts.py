"""Killed runs: SIGTERM (from `timeout`, a job scheduler) and Ctrl-C during a real conversion end
with one line and the conventional exit code, and leave nothing beside --out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_tiny_unet

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def start_conversion(model: Path, work: Path) -> subprocess.Popen:
    """A tiny conversion whose fidelity check (inside the staging folder) runs for many seconds."""
    module, _, attribute = SCRIPTS["sdm-convert"].partition(":")
    code = f"import sys; from {module} import {attribute} as main; sys.exit(main(sys.argv[1:]))"
    argv = ["--checkpoint", str(model), "--timesteps", "4", "--calib-samples", "2", "--calib-steps", "2",
            "--eval-samples", "16", "--eval-steps", "1000", "--out", str(work / "out")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def wait_for_staging(work: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(p.name.startswith(".out.") for p in work.iterdir()):
            return
        if process.poll() is not None:
            pytest.fail(f"the conversion ended before staging: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("no staging folder appeared")


def test_sigterm_and_sigint_mid_run_clean_up_and_say_so_in_one_line(tmp_path):
    model = tmp_path / "model"
    make_tiny_unet().save_pretrained(model)
    runs = {}
    for signum in (signal.SIGTERM, signal.SIGINT):  # both at once: two cores, one torch import's wait
        work = tmp_path / signal.Signals(signum).name
        work.mkdir()
        runs[signum] = (work, start_conversion(model, work))
    for signum, (work, process) in runs.items():
        wait_for_staging(work, process)
        process.send_signal(signum)
    for signum, (work, process) in runs.items():
        _, err = process.communicate(timeout=120)
        name = signal.Signals(signum).name
        assert process.returncode == 128 + signum, (name, process.returncode, err[-2000:])
        assert "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1] == f"sdm-convert: interrupted ({name})", err[-2000:]
        assert list(work.iterdir()) == [], f"{name} left {list(work.iterdir())}"

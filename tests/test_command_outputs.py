"""What a real command leaves: outputs with the user's umask; and killed runs (SIGTERM from
`timeout` or a job scheduler, Ctrl-C) that end with one line and the conventional exit code and
leave nothing beside --out."""

from __future__ import annotations

import importlib
import os
import re
import signal
import stat
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


# The readiness marker: atomic_folder's staging folder (`.out.` + 12 hex digits), created only
# after its signal handlers are installed. The write probe before it (`.out.probe.*`) lives for
# microseconds before any handler exists: a signal sent then kills the process outright, which
# is what made this test fail on a loaded machine when it matched any `.out.` name.
STAGING = re.compile(r"\.out\.[0-9a-f]{12}")


def wait_for_staging(work: Path, process: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(STAGING.fullmatch(p.name) for p in work.iterdir()):
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
        _, err = process.communicate(timeout=600)  # generous: a loaded 2-core machine
        name = signal.Signals(signum).name
        assert process.returncode == 128 + signum, (name, process.returncode, err[-2000:])
        assert "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1] == f"sdm-convert: interrupted ({name})", err[-2000:]
        assert list(work.iterdir()) == [], f"{name} left {list(work.iterdir())}"


def test_a_converted_folder_has_the_modes_the_umask_gives(tmp_path, capsys):
    model, out = tmp_path / "model", tmp_path / "out"
    make_tiny_unet().save_pretrained(model)
    module, _, attribute = SCRIPTS["sdm-convert"].partition(":")
    main = getattr(importlib.import_module(module), attribute)
    previous = os.umask(0o027)
    try:
        assert main(["--checkpoint", str(model), "--timesteps", "2", "--calib-samples", "2", "--calib-steps", "2",
                     "--eval-samples", "1", "--eval-steps", "1", "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    paths = [out, *out.rglob("*")]
    assert {p.name for p in paths} >= {"config.json", "diffusion_pytorch_model.safetensors", "grid.png", "summary.json"}
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path

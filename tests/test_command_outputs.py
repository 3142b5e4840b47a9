"""What a real command leaves: outputs with the user's umask; and killed runs (SIGTERM from
`timeout` or a job scheduler, Ctrl-C) that end with one line and the conventional exit code and
leave nothing beside --out."""

from __future__ import annotations

import importlib
import os
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


# The child runs the real command with `sdm.core.atomic.atomic_folder` wrapped (in its own
# interpreter only): once the block has filled the staging folder (its signal handlers installed),
# the wrapper touches the marker file named by argv[1] and waits, still inside the staging block,
# for the test's signal. The test waits for the marker, not for time, so a loaded machine can
# neither let the run finish first nor signal it before the handlers exist. SIGINT is given
# Python's default handler in case the test itself runs with SIGINT ignored (a background job).
CHILD = """
import contextlib, signal, sys, time
from pathlib import Path
from sdm.core import atomic
from {module} import {attribute} as main

marker = Path(sys.argv.pop(1))
staged = atomic.atomic_folder

@contextlib.contextmanager
def staged_then_ready(*args, **kwargs):
    with staged(*args, **kwargs) as staging:
        yield staging
        marker.touch()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(1)  # the signal's exception is raised here
        raise RuntimeError("no signal came within 600 s")

atomic.atomic_folder = staged_then_ready
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main(sys.argv[1:]))
"""


def start_conversion(model: Path, work: Path, marker: Path) -> subprocess.Popen:
    """A tiny conversion that, once its staging folder is full, touches `marker` and waits for a signal."""
    module, _, attribute = SCRIPTS["sdm-convert"].partition(":")
    code = CHILD.format(module=module, attribute=attribute)
    argv = [str(marker), "--checkpoint", str(model), "--timesteps", "4", "--calib-samples", "2", "--calib-steps",
            "2", "--eval-samples", "1", "--eval-steps", "2", "--out", str(work / "out")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def wait_until_ready(marker: Path, process: subprocess.Popen, seconds: float = 600) -> None:
    """Wait for the child's marker; the time bound only catches a hung child."""
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the conversion ended before it was ready: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no readiness marker within {seconds} s")
        time.sleep(0.05)


def test_sigterm_and_sigint_mid_run_clean_up_and_say_so_in_one_line(tmp_path):
    model = tmp_path / "model"
    make_tiny_unet().save_pretrained(model)
    runs = {}
    for signum in (signal.SIGTERM, signal.SIGINT):  # both at once: two cores, one torch import's wait
        work = tmp_path / signal.Signals(signum).name
        work.mkdir()
        marker = tmp_path / f"{work.name}.ready"  # beside the work folder, whose emptiness is checked
        runs[signum] = (work, marker, start_conversion(model, work, marker))
    try:
        for signum, (work, marker, process) in runs.items():
            wait_until_ready(marker, process)
            assert [p.name for p in work.iterdir() if p.name.startswith(".out.")], list(work.iterdir())  # staged
            process.send_signal(signum)
        for signum, (work, _, process) in runs.items():
            _, err = process.communicate(timeout=600)  # generous: a loaded 2-core machine
            name = signal.Signals(signum).name
            assert process.returncode == 128 + signum, (name, process.returncode, err[-2000:])
            assert "Traceback" not in err, err[-2000:]
            assert err.strip().splitlines()[-1] == f"sdm-convert: interrupted ({name})", err[-2000:]
            assert list(work.iterdir()) == [], f"{name} left {list(work.iterdir())}"
    finally:  # a failure above leaves no child waiting out its 600 s
        for _, _, process in runs.values():
            if process.poll() is None:
                process.kill()
                process.communicate()

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

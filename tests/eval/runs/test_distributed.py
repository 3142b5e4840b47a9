"""Sharded sampling: two gloo processes under torchrun save exactly the single process's samples."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from sdm.cli.compare import main as compare_main
from sdm.cli.convert import main as convert_main
from sdm.eval.runs import distributed

from tests.conftest import ROOT, make_tiny_unet

COMPARE = str(ROOT / "eval" / "compare.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    make_tiny_unet().save_pretrained(root / "ann")
    argv = ["--checkpoint", str(root / "ann"), "-T", "2", "--out", str(root / "snn"),
            "--calib-samples", "2", "--calib-steps", "2", "--eval-samples", "0"]
    assert convert_main(argv) == 0
    return root


def _argv(models, out, seed="0", samples="5", *extra):
    # batches of 2: 5 samples give three batches, so the ranks get unequal shares (2 and 1);
    # ddpm: a stochastic sampler, whose per-batch generators must follow the global batch index
    return ["ann-vs-snn", "--ann", str(models / "ann"), "--snn", str(models / "snn"), "--num-samples", samples,
            "--steps", "2", "--batch-size", "2", "--sampler", "ddpm", "--seed", seed, "--out", str(out), *extra]


@pytest.mark.parametrize("samples", ["4", "5", "1"])  # even shards, uneven ones, an empty one (rank 1 runs nothing)
def test_two_gloo_processes_save_the_single_process_samples(models, tmp_path, samples):
    """Every collective is entered by every rank: the launch ends (a hang fails at the timeout)
    with the single process's samples and numbers, `--simulation both` included."""
    both = ("--simulation", "both")
    assert compare_main(_argv(models, tmp_path / "one", "0", samples, *both)) == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           COMPARE, *_argv(models, tmp_path / "two", "0", samples, *both)], env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("samples_ann.npz", "samples_snn.npz"):
        one, two = np.load(tmp_path / "one" / name)["images"], np.load(tmp_path / "two" / name)["images"]
        assert one.shape == (int(samples), 8, 8, 3) and np.array_equal(one, two)
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two")]
    assert reports[0]["processes"] == 1 and reports[1]["processes"] == 2
    for key in ("paired", "spike_rate"):
        assert reports[0][key] == reports[1][key]
    runs = [r["runs"][0] for r in reports]
    timing = "closed_form_over_steps_time"  # a measured time ratio, not a count
    assert {k: v for k, v in runs[0]["equivalence"].items() if k != timing} == \
        {k: v for k, v in runs[1]["equivalence"].items() if k != timing}
    assert runs[0]["energy"]["snn_over_ann"] == pytest.approx(runs[1]["energy"]["snn_over_ann"])
    assert done.stdout.count("wrote ") == 1  # rank 0 alone reports and writes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_given_different_options_all_fail_with_one_line(models, tmp_path):
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, COMPARE, *_argv(models, tmp_path / "out", seed=str(rank))],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2
        errors.append(stderr.strip().splitlines()[-1])
    assert errors[0] == errors[1] and errors[0].startswith("compare.py: error: torchrun ranks disagree on options")
    assert not (tmp_path / "out").exists()


def test_a_single_process_runs_every_batch():
    assert not distributed.launched() and distributed.world_size() == 1
    assert distributed.my_batches(5, 2) == [0, 1, 2]

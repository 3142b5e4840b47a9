"""The allocator setting keeps freed activation buffers mapped: a UNet's repeated calls stop
page-faulting their working memory back in."""

import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = """
import resource, sys
import torch
from tests.conftest import make_tiny_unet
from sdm.converter.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.set_num_threads(1)
unet = make_tiny_unet(sample_size=64, block_out_channels=(32, 64))
x = torch.randn(8, 3, 64, 64)
with torch.no_grad():
    for _ in range(2):
        unet(x, 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        unet(x, 10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("MALLOC_MMAP_THRESHOLD_", None)
    environment.pop("MALLOC_TRIM_THRESHOLD_", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, cwd=ROOT,
                          env=environment, timeout=300, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_repeated_unet_calls_stop_page_faulting():
    default, retained = _page_faults("default"), _page_faults("retain")
    assert retained * 4 < default

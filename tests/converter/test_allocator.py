"""The allocator setting keeps freed activation buffers mapped: reusing one costs no page faults."""

import platform
import resource

import pytest
import torch

from converter.allocator import retain_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_freed_buffer_is_reused_without_page_faults():
    assert retain_freed_memory()
    size = 16 * 2**20 // 4  # 16 MiB of float32: 4,096 pages
    torch.ones(size)  # allocated, written and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(size)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 512

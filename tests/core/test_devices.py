"""The one device resolver, the TF32 switch of paired comparisons, and the call timer."""

import time

import pytest
import torch
from sdm.core.devices import CallTimer, resolve_device, set_tf32, tf32_enabled, tf32_mode
from sdm.core.errors import SdmError


def test_cpu_and_auto_resolve_without_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("gpu", "unknown device 'gpu'"), ("mps", "unsupported device 'mps'"),
                                           ("cuda:x", "unknown device")])
def test_bad_device_strings_are_one_line_errors(name, message):
    with pytest.raises(SdmError, match=message) as caught:
        resolve_device(name)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine resolves these")
@pytest.mark.parametrize("name", ["cuda", "cuda:7"])
def test_cuda_without_cuda_is_refused_by_name(name):
    with pytest.raises(SdmError, match=f"device '{name}' asked for, but CUDA is not available"):
        resolve_device(name)


def test_tf32_mode_sets_and_restores():
    before = tf32_enabled()
    with tf32_mode(not before):
        assert tf32_enabled() is (not before)
    assert tf32_enabled() is before
    set_tf32(before)


def test_call_timer_adds_up_its_blocks_on_cpu():
    timer = CallTimer("cpu")
    for _ in range(2):
        with timer():
            time.sleep(0.01)
    assert 0.02 <= timer.seconds < 1.0

"""Devices: the one resolver (every `--device` string of every command goes through here), the
TF32 setting of paired comparisons, and a timer that is honest on asynchronous CUDA."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import SdmError
from .settings import DEVICE_HELP


def resolve_device(name: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, or a one-line SdmError naming the problem."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SdmError(f"unknown device {name!r} (use {DEVICE_HELP})") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise SdmError(f"unsupported device {name!r} (use {DEVICE_HELP})")
    if not torch.cuda.is_available():
        raise SdmError(f"device {name!r} asked for, but CUDA is not available here")
    # Under torchrun each process takes the GPU of its local rank unless a device names its index.
    index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    count = torch.cuda.device_count()
    if index >= count:
        raise SdmError(f"device {name!r} does not exist here ({count} CUDA device{'s' if count != 1 else ''})")
    return torch.device("cuda", index)


def tf32_enabled() -> bool:
    """Whether float32 convolutions and matrix products may round through TF32 on CUDA."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return conv.fp32_precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def set_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False) TF32 for float32 convolutions and matrix products on CUDA.

    PyTorch allows it for cuDNN convolutions by default: on Ampere and later the ANN and the SNN
    then see ~1e-3 relative rounding noise in every convolution, which flips spikes at threshold
    ties, so paired comparisons forbid it unless asked. The new (torch >= 2.9) settings are used
    where they exist; mixing them with the legacy flags is an error in PyTorch.
    """
    precision = "tf32" if enabled else "ieee"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = precision
        conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


@contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """`set_tf32(enabled)` inside the block, the previous setting after it."""
    previous = tf32_enabled()
    set_tf32(enabled)
    try:
        yield
    finally:
        set_tf32(previous)


class CallTimer:
    """Wall time of the timed blocks, honest on CUDA.

    CUDA runs kernels asynchronously, so a host clock read after a call measures its launch,
    not its work. On CUDA each block is bracketed by CUDA events and the elapsed times are read
    once, at `seconds` (no host synchronisation inside the sampling loop); elsewhere the host
    clock is read around each block.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._host_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
            return
        began = time.perf_counter()
        yield
        self._host_seconds += time.perf_counter() - began

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
            self._host_seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
            self._events.clear()
        return self._host_seconds


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA), so a host clock read after it is honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)

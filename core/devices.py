"""The one device resolver: every `--device` string of every command goes through here."""

from __future__ import annotations

import torch

from sdm.core.errors import SdmError

DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when present, else cpu)"


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
    index = device.index if device.index is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise SdmError(f"device {name!r} does not exist here ({count} CUDA device{'s' if count != 1 else ''})")
    return torch.device("cuda", index)

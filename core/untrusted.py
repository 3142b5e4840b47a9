"""Reading PyTorch checkpoints nobody vouches for: tensors only, and a refusal that says what the
file is when it is not a checkpoint at all.

`torch.load(weights_only=True)` never runs code from the file, but its errors describe its own
internals ("pop from empty list", "[enforce fail at inline_container.cc:180]"); a user who
passed a text file or some other zip archive named `.pt` needs to hear that instead.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import SdmError

_SNIFF_BYTES = 4096


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the sniffing boundary is still text
        return exc.start >= len(head) - 3
    return True


def _torch_reason(exc: BaseException) -> str:
    """The informative line of a torch.load error, which otherwise spans paragraphs of advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    boilerplate = ("(", "Check the documentation", "Please file an issue")
    details = [line for line in lines[1:] if not line.startswith(boilerplate)]
    reason = (details or lines or [type(exc).__name__])[0]
    return reason.removeprefix("WeightsUnpickler error:").strip().split(". ")[0]


def why_not_loadable(path: Path, exc: BaseException) -> str:
    """What `path` is, in a user's words, given that torch.load(weights_only=True) refused it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else None
    except (OSError, zipfile.BadZipFile) as error:
        return f"unreadable: {error.strerror if isinstance(error, OSError) and error.strerror else error}"
    if not head:
        return "not a PyTorch checkpoint (an empty file)"
    if names is not None and not any(name.endswith("data.pkl") for name in names):
        return "a zip archive that is not a PyTorch checkpoint"
    if names is None and _is_text(head):
        return "not a PyTorch checkpoint (a text file)"
    kind = "refusing to unpickle code or corrupt" if isinstance(exc, pickle.UnpicklingError) else "corrupt"
    return f"not a weights-only PyTorch checkpoint ({kind}): {_torch_reason(exc)}"


def load_weights_only(path: Path, error: type[SdmError] = SdmError, prefix: str = "") -> Any:
    """torch.load with weights_only=True on the CPU; any failure is one line naming what the file is."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # torch.load raises many types on arbitrary bytes (UnpicklingError, RuntimeError, EOFError, IndexError, ...).
    except Exception as exc:  # noqa: BLE001
        raise error(f"{prefix}{path}: {why_not_loadable(Path(path), exc)}") from None

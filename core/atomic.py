"""The one atomic writer: an output appears whole under its final name, or not at all.

Files are written to a hidden temporary name beside the target and renamed over it (`os.replace`
is atomic within one file system); folders are assembled in a hidden staging folder beside the
target and renamed into place when the block finishes. An error, Ctrl-C or SIGTERM removes the
temporary (a signal only reaches the cleanup if it arrives as an exception: see
`sdm.core.errors.signals_as_exceptions`, which `atomic_folder` and every command install).
Temporary names are private (mode 0o600 / 0o700), so outputs are given the mode the user's umask
implies before they appear: folders 0o777 & ~umask, files 0o666 & ~umask.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import SdmError, signals_as_exceptions


class OutputError(SdmError):
    """An output path that cannot be written, or that would clobber something."""


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path, executable: bool = False) -> None:
    """Give `path` (and, for a folder, everything under it) the modes a plain create would get."""
    mask = current_umask()
    folder_mode, file_mode = 0o777 & ~mask, (0o777 if executable else 0o666) & ~mask
    if path.is_dir():
        for root, folders, files in os.walk(path):
            for name in files:
                os.chmod(os.path.join(root, name), file_mode)
            for name in folders:
                os.chmod(os.path.join(root, name), folder_mode)
        os.chmod(path, folder_mode)
    else:
        os.chmod(path, file_mode)


def _hidden_name(target: Path, suffix: str = "") -> Path:
    """A fresh hidden name beside `target` for its temporary (random, so concurrent runs never meet)."""
    return target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def probe_writable(target: Path, error: type[SdmError] = OutputError) -> None:
    """Prove that `target` could be created, before any long work: create and remove a probe
    folder in its nearest existing ancestor (nothing is left behind, parents are not created)."""
    target = Path(target).absolute()
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(f"cannot write {target}: {ancestor} is not a folder")
    probe: Path | None = _hidden_name(ancestor / target.name, ".probe")
    try:  # created inside the `try` whose `finally` removes it: a signal cannot leave it behind
        try:
            probe.mkdir(mode=0o700)
        except OSError as exc:
            probe = None  # not created (or, if the random name existed, not ours)
            raise error(f"cannot write {target}: {_reason(exc)} ({ancestor})") from None
    finally:
        if probe is not None:
            with suppress(FileNotFoundError):
                probe.rmdir()


def ensure_free_target(target: Path, overwrite: bool = False, error: type[SdmError] = OutputError) -> None:
    """Refuse early (before any long work) to clobber a non-empty folder or a file, or to write
    where nothing can be written."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise error(f"output path exists and is not a folder: {target}")
    if target.exists() and not overwrite and any(target.iterdir()):
        raise error(f"output folder exists and is not empty: {target} (pass --overwrite)")
    probe_writable(target, error)


@contextmanager
def atomic_folder(target: Path, overwrite: bool = False, error: type[SdmError] = OutputError) -> Iterator[Path]:
    """Yield a hidden staging folder beside `target` that becomes `target` only if the block
    finishes; on any exception, Ctrl-C or SIGTERM the staging folder is removed."""
    target = Path(target)
    ensure_free_target(target, overwrite, error)
    staging: Path | None = _hidden_name(target)
    with signals_as_exceptions():
        try:
            try:  # created inside the `try` whose `finally` removes it: no signal can fall in between
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.mkdir(mode=0o700)
            except OSError as exc:
                staging = None  # not created (or, if the random name existed, not ours)
                raise error(f"cannot write output folder {target}: {_reason(exc)}") from None
            yield staging
            try:
                apply_umask(staging)
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            except OSError as exc:
                raise error(f"cannot write output folder {target}: {_reason(exc)}") from None
        finally:
            if staging is not None and staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(path: Path, error: type[SdmError] = OutputError, executable: bool = False,
                parents: bool = False) -> Iterator[Path]:
    """Yield a hidden, empty temporary file beside `path` to write; it replaces `path` only if
    the block finishes (an interruption leaves the previous file, if any, untouched). `parents`:
    create missing folders above `path` (else a missing folder is refused)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"output path is a folder, not a file: {path}")
    temporary: Path | None = _hidden_name(path, ".tmp")
    with signals_as_exceptions():
        try:
            try:  # created inside the `try` whose `finally` removes it
                if parents:
                    path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                temporary = None
                raise error(f"cannot write {path}: {_reason(exc)}") from None
            yield temporary
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())  # on disk before the rename makes it the file
            apply_umask(temporary, executable)
            os.replace(temporary, path)
        except OSError as exc:
            raise error(f"cannot write {path}: {_reason(exc)}") from None
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes, error: type[SdmError] = OutputError) -> None:
    with atomic_file(path, error) as temporary:
        temporary.write_bytes(data)


def write_text(path: Path, text: str, error: type[SdmError] = OutputError) -> None:
    with atomic_file(path, error) as temporary:
        temporary.write_text(text)


def torch_save(obj: Any, path: Path, error: type[SdmError] = OutputError) -> None:
    """`torch.save` atomically (checkpoints: a kill mid-write leaves the previous checkpoint)."""
    import torch

    with atomic_file(path, error) as temporary:
        torch.save(obj, temporary)

"""The one exception type that means "the user gave us something we cannot use", and how a
command ends: one line on stderr and exit 2 for a user error, one line and 128 + the signal's
number when it is interrupted (Ctrl-C, SIGTERM from `timeout` or a job scheduler, SIGHUP from a
closed terminal), with every temporary output removed on the way out.

Command-line entry points catch :class:`SdmError` and print its message as a single line;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, TypeVar

T = TypeVar("T")
# Signals that end a run the way Ctrl-C does (SIGINT is Python's KeyboardInterrupt already).
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class SdmError(Exception):
    """A problem with the user's input (path, file, option), reported as one line."""


class Interrupted(BaseException):
    """A terminating signal delivered as an exception, so that `finally` blocks clean up.

    A BaseException like KeyboardInterrupt: `except Exception` in library code must not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the cleanup short
    raise Interrupted(signum)


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` (by default they kill the
    process at once, so no cleanup runs). Only the main thread can install handlers; nested
    blocks and signals already ignored (e.g. SIGHUP under nohup) are left as they are."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in TERMINATING:
            current = signal.getsignal(signum)
            if current not in (_raise_interrupted, signal.SIG_IGN):
                previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _close_progress_bars() -> None:
    """Finish any tqdm bar on its own line first, so the command's last line is its own."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def interruption_message(prog: str, signum: int, hint: str = "") -> int:
    """Print the one line an interrupted command ends with; return its exit code (128 + signal)."""
    _close_progress_bars()
    print(f"{prog}: interrupted ({signal.Signals(signum).name})" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return 128 + signum


def run_reporting_errors(prog: str, action: Callable[[], T], interrupted_hint: str = "") -> tuple[T | None, int]:
    """Run a command's action; a user error becomes one line on stderr and exit code 2, an
    interruption one line and 130 (SIGINT) / 143 (SIGTERM) / 129 (SIGHUP), never a traceback."""
    try:
        with signals_as_exceptions():
            return action(), 0
    except SdmError as exc:
        _close_progress_bars()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt:
        return None, interruption_message(prog, signal.SIGINT, interrupted_hint)
    except Interrupted as exc:
        return None, interruption_message(prog, exc.signum, interrupted_hint)

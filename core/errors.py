"""The one exception type that means "the user gave us something we cannot use".

Command-line entry points catch :class:`SdmError` and print its message as a single line;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class SdmError(Exception):
    """A problem with the user's input (path, file, option), reported as one line."""


def run_reporting_errors(prog: str, action: Callable[[], T]) -> tuple[T | None, int]:
    """Run a command's action; a user error becomes one line on stderr and exit code 2."""
    try:
        return action(), 0
    except SdmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None, 2

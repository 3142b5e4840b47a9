"""Option checks every command shares, importable without torch: a bad option costs nothing."""

from __future__ import annotations

from sdm.core.errors import SdmError


def parse_list(text: str, flag: str, kind: type = int, error: type[SdmError] = SdmError) -> list:
    """A comma list of numbers (`4,8`), empty items skipped; anything else is a one-line error."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        word = "integers" if kind is int else "numbers"
        raise error(f"{flag} must be comma-separated {word}, got {text!r}") from None

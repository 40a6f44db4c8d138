"""The one exception type of the data layer.

Why a dedicated class: the trainer and the CLIs catch ``DataError`` and print its message as the
single line a user sees (missing data root, empty split list, unreadable taxonomy, too many bad
samples), while genuine bugs keep their tracebacks.
"""
from __future__ import annotations

from pathlib import Path


class DataError(RuntimeError):
    """A user-fixable data problem; the message is one line naming the path and the fix."""


def read_user_text(path: Path, what: str, fix: str = "") -> str:
    """A small UTF-8 file a user supplies (class lists, name overrides): a missing or undecodable file
    is one line naming ``what``, the path and, where given, the ``fix``."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}" + (f" ({fix})" if fix else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DataError(f"cannot read {what} {path}: {reason}") from None

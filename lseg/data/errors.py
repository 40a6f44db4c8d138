"""The one exception type of the data layer.

Why a dedicated class: the trainer and the CLIs catch ``DataError`` and print its message as the
single line a user sees (missing data root, empty split list, unreadable taxonomy, too many bad
samples), while genuine bugs keep their tracebacks.
"""
from __future__ import annotations


class DataError(RuntimeError):
    """A user-fixable data problem; the message is one line naming the path and the fix."""

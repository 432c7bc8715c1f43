"""Errors shared by the core and the shell: a leaf module, importable from anywhere."""

from __future__ import annotations


class Rejected(Exception):
    """Bad input: the event must be dead-lettered and must change nothing.

    ``reason`` is a short stable label (metrics, dead-letter headers);
    the message says what exactly was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

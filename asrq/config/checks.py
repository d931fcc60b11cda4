"""The validation helper of every config family."""

from __future__ import annotations

from asrq.utils.io import AsrqError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise AsrqError(f"invalid config: {msg}")

"""Grading mode: strict exercise checks for an autograder.

With DIFFEDU_GRADING=1 in the environment (or `set_grading(True)`), a skipped exercise fails its check
instead of falling back to the library's reference, so nbgrader gives it no marks.
"""

from __future__ import annotations

import os

_grading_override: bool | None = None


def set_grading(enabled: bool | None) -> None:
    """Turn grading mode on or off for this process (None: follow DIFFEDU_GRADING again)."""
    global _grading_override
    _grading_override = enabled


def grading_enabled() -> bool:
    """True when exercise checks are strict: `set_grading(True)`, or DIFFEDU_GRADING=1 (or true, yes, on)."""
    if _grading_override is not None:
        return _grading_override
    return os.environ.get("DIFFEDU_GRADING", "").strip().lower() in ("1", "true", "yes", "on")

"""How a failed item or artifact is described, shared by the runner and its child processes
(its own module so that neither imports the other)."""

from __future__ import annotations


def failure_reason(exc: BaseException) -> str:
    """A one-line failure reason: the exception type and its message (which names the file, if any)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}"[:500]

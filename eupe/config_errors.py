"""Errors a run reports as one message and a non-zero exit (no traceback): a wrong setting, found before any
work, and a run that produced nothing usable."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class ConfigError(ValueError):
    """A setting is wrong; the message names the setting, what was given and what is allowed."""


class RunFailed(RuntimeError):
    """The run finished but nothing in it succeeded (e.g. every token failed); its outputs are still written."""


@contextmanager
def exit_on_run_errors() -> Iterator[None]:
    """Around an entry point's work: a ``ConfigError`` or ``RunFailed`` becomes ``SystemExit`` with its message
    (exit code 1), so sweeps and CI see the failure and the user reads one line, not a traceback."""
    try:
        yield
    except ConfigError as err:
        raise SystemExit(f"configuration error: {err}") from None
    except RunFailed as err:
        raise SystemExit(f"run failed: {err}") from None

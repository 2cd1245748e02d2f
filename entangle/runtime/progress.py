"""Progress bars: live on a terminal, one line per bar in logs, nothing when disabled; and
live-only bars for work that prints its own result line (a training epoch)."""

from __future__ import annotations

import sys

import keras


def progbar(target: int, *, enabled: bool = True, unit_name: str = "step",
            stateful_metrics=None) -> keras.utils.Progbar:
    verbose = 0 if not enabled else (1 if sys.stdout.isatty() else 2)
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit_name,
                               stateful_metrics=stateful_metrics)


def live_bar(target: int, *, enabled: bool = True, unit_name: str = "step",
             stateful_metrics=None) -> keras.utils.Progbar:
    """A bar updated in place on a terminal and absent from logs: the caller never finalizes
    it, but calls ``clear_line`` and prints its own one line for the work."""
    return progbar(target, enabled=enabled and sys.stdout.isatty(), unit_name=unit_name,
                   stateful_metrics=stateful_metrics)


def clear_line() -> None:
    """Erases a live bar's line on a terminal (nothing in logs)."""
    if sys.stdout.isatty():
        sys.stdout.write("\r\x1b[2K")
        sys.stdout.flush()

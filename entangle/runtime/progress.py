"""Progress bars: live on a terminal, one line per bar in logs, nothing when disabled."""

from __future__ import annotations

import sys

import keras


def progbar(target: int, *, enabled: bool = True, unit_name: str = "step",
            stateful_metrics=None) -> keras.utils.Progbar:
    verbose = 0 if not enabled else (1 if sys.stdout.isatty() else 2)
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit_name,
                               stateful_metrics=stateful_metrics)

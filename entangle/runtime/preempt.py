"""Graceful preemption: SIGTERM (a scheduler's notice) and SIGINT ask long loops to stop at
their next safe point (a training batch, an attack batch, a chunk), where the work done so far
is checkpointed, locks are released and ``Preempted`` is raised.

The binaries install the handlers (``handling()``); the library only polls (``check()``), so
an application that embeds entangle keeps its own signal handling. A second signal of the same
kind ends the process at once with the conventional code (128 + signal number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

_requested: list[int] = []  # signal numbers received, first first


class Preempted(Exception):
    """Stopped at a safe point on a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, where: str = ""):
        self.signum, self.where = signum, where
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}{' ' + where if where else ''}; what was done is "
                         f"checkpointed and locks are released: rerun the same command to "
                         f"resume")


def request(signum: int = signal.SIGTERM) -> None:
    """Asks the running work to stop at its next safe point (what the handler does)."""
    _requested.append(int(signum))


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return _requested[0] if _requested else None


def clear() -> None:
    _requested.clear()


def check(where: str = "") -> None:
    """Raises ``Preempted`` if a stop was asked for: call it where stopping loses nothing."""
    signum = requested()
    if signum:
        raise Preempted(signum, where)


def sleep(seconds: float, where: str = "") -> None:
    """``time.sleep`` that is a safe point: a stop asked for before or during it raises
    ``Preempted`` within a fifth of a second (waiting on another process's lock, for one)."""
    end = time.monotonic() + seconds
    while True:
        check(where)
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.2, left))


def _handler(signum, frame):
    if signum in _requested:  # the second notice: stop now
        os._exit(128 + signum)
    request(signum)
    print(f"\nreceived {signal.Signals(signum).name}: stopping at the next safe point "
          f"(send it again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def handling(signals=(signal.SIGTERM, signal.SIGINT)):
    """Installs the stop-at-a-safe-point handlers for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        clear()

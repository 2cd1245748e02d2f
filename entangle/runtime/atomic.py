"""The store's building blocks: files written atomically (a temporary named by its owner,
renamed into place), temporaries whose owner died, resumable chunked arrays, and the lock
file one process holds while it builds an artifact (heartbeat, takeover of a dead holder)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import sys
import uuid
import zipfile
from typing import Callable

import numpy as np

from entangle.runtime import preempt


def builder_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


ORPHAN_AGE = 86400.0  # a temporary without a checkable owner is an orphan after a day
# A lock file whose owner cannot be read is never one being written (owners are linked into
# place whole), so after this grace for a slow NFS client's attribute cache it is broken.
UNREADABLE_GRACE = 5.0


_TAGGED = re.compile(r"\.tmp-(?P<pid>\d+)@(?P<host>.+)-[a-z0-9_]+(\.tmp)?$")


def owner_tag() -> str:
    """pid@host, written into every temporary's name so that a later run can tell whether
    the process that made it is still alive."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def orphaned(path: str, *, other_hosts_dead: bool = False, now: float | None = None) -> bool:
    """Whether a temporary (``.<key>.tmp-<pid>@<host>-*`` directory or ``.tmp`` file) has no
    live owner: its pid is gone on this host, or, where the owner cannot be checked (another
    host, or a name from before owners were recorded), it is older than ``ORPHAN_AGE``
    (``other_hosts_dead``: the caller holds the artifact's lock, so no other host writes it)."""
    m = _TAGGED.search(os.path.basename(path))
    if m and m["host"] == socket.gethostname():
        return int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
    if m and other_hosts_dead:
        return True
    try:
        age = (now or time.time()) - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    return age > ORPHAN_AGE


def tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path) if os.path.exists(path) else 0
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if os.path.exists(os.path.join(d, f)))


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def build_chunks(workdir: str, n: int, chunk_size: int,
                 make: Callable[[slice], dict[str, np.ndarray]], *,
                 on_chunk: Callable[[int], None] | None = None,
                 bar=None) -> None:
    """Fills ``workdir/chunk-NNNNN.npz`` with ``make(rows)`` for consecutive row slices,
    atomically, skipping chunks already there: a killed build resumes, losing at most one
    chunk, and memory holds one chunk at a time."""
    os.makedirs(workdir, exist_ok=True)
    made = set()
    for c in range(-(-n // chunk_size)):
        rows = slice(c * chunk_size, min(n, (c + 1) * chunk_size))
        path = os.path.join(workdir, f"chunk-{c:05d}.npz")
        if os.path.exists(path) and c not in made:
            read_npz(path, f"chunk {c} of {workdir}")   # left by an earlier run: check it
        if not os.path.exists(path):
            atomic_save_npz(path, **make(rows))
            made.add(c)
            if on_chunk:
                on_chunk(c)
        if bar is not None:
            bar.update(rows.stop, finalize=rows.stop == n)
        if rows.stop < n:
            preempt.check(f"after chunk {c + 1} of {-(-n // chunk_size)} in {workdir}")


def assemble_chunks(workdir: str, name: str, out_path: str) -> np.ndarray:
    """Concatenates array ``name`` of every chunk into one ``.npy`` file, streamed chunk by
    chunk; returns it memory-mapped (read-only)."""
    paths = sorted(p for p in os.listdir(workdir) if p.startswith("chunk-"))
    if not paths:
        raise RuntimeError(f"no chunks in {workdir}")
    shapes = []
    for p in paths:
        with np.load(os.path.join(workdir, p)) as z:
            shapes.append((z[name].shape, z[name].dtype))
    n = sum(s[0][0] for s in shapes)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=shapes[0][1],
                                    shape=(n,) + shapes[0][0][1:])
    start = 0
    for p, (shape, _) in zip(paths, shapes):
        with np.load(os.path.join(workdir, p)) as z:
            out[start:start + shape[0]] = z[name]
        start += shape[0]
    out.flush()
    del out
    return np.load(out_path, mmap_mode="r")


class ArtifactBusy(RuntimeError):
    """Another live process holds the lock of the artifact (``get_or_build(wait=False)``)."""


class Lock:
    """An exclusive lock file that works on local disks and shared file systems.

    Holds the owner's host, pid and a token, linked into place whole (never empty); a daemon
    thread refreshes its mtime every ``heartbeat`` seconds. A lock counts as stale when its
    host is this host and its pid is gone, when it has not been refreshed for ``stale_after``
    seconds, or when its owner cannot be read and it is older than ``UNREADABLE_GRACE``; a
    stale lock is renamed away (one winner) and acquisition retried.
    """

    def __init__(self, path: str, *, heartbeat: float = 30.0, stale_after: float = 600.0):
        self.path, self.heartbeat, self.stale_after = path, heartbeat, stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                owner = json.load(f)
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _stale(self, owner: dict | None) -> bool:
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return False
        if owner is None:  # never written partly (see try_acquire): garbage, or a hand's
            return age > UNREADABLE_GRACE
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(int(owner["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, KeyError):
                pass
        return age > self.stale_after

    def held(self) -> bool:
        """Whether a live process holds this lock (it exists and is not stale)."""
        return os.path.exists(self.path) and not self._stale(self.owner())

    def try_acquire(self) -> bool:
        """Takes the lock if it is free or stale. The owner is written to a temporary file
        first and hard-linked into place (atomic, and exclusive on local and NFS file
        systems), so a lock file is never empty or partly written, even on a full disk."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        record = json.dumps({**builder_id(), "token": self.token, "since": time.time()})
        for _ in range(3):
            if self._place(record):
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return True
            owner = self.owner()
            if not self._stale(owner):
                return False
            self._break(owner)
        return False

    def _place(self, record: str) -> bool:
        """Creates the lock file holding ``record``; False when one is there already."""
        folder, name = os.path.split(self.path)
        staged = os.path.join(folder, f".{name}.tmp-{owner_tag()}-{self.token}")
        try:
            with open(staged, "w") as f:
                f.write(record)
            os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                return self._place_exclusive(record)  # a file system without hard links
            raise OSError(e.errno, e.strerror, self.path) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)

    def _place_exclusive(self, record: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(record)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # never leave an empty lock behind
            raise OSError(e.errno, e.strerror, self.path) from e
        return True

    def _break(self, seen: dict | None) -> None:
        aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # somebody else broke it first
        try:
            with open(aside) as f:
                taken = json.load(f)
        except (OSError, ValueError):
            taken = None
        if seen is not None and taken is not None and taken.get("token") != seen.get("token"):
            try:  # we raced and took a fresh lock: put it back unless a newer one exists
                os.link(aside, self.path)
            except OSError:
                pass
        os.unlink(aside)

    def _beat(self):
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        owner = self.owner()
        if owner is not None and owner.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb"):
    """Yields a temporary file beside ``path``; on success it is renamed onto ``path``.

    A process killed mid-write leaves at most a stray temporary file, never a partial ``path``.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp",
                               prefix=f".{os.path.basename(path)}.tmp-{owner_tag()}-")
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600: colleagues sharing a store read it
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if e.filename is None:  # a failed write names no file: name the one being written
            raise OSError(e.errno, e.strerror, path) from e
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_npz(path: str, **arrays) -> None:
    """np.savez through atomic_file."""
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def read_npz(path: str, what: str) -> dict[str, np.ndarray] | None:
    """Every array of an ``.npz`` (each read whole, so zip's CRC-32 checks every byte), or
    None when there is none; a damaged one is named, removed and None returned, so the caller
    rebuilds it from its last good state."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        print(f"WARNING: damaged {what} {path} ({type(e).__name__}: {e}); discarded, it will "
              f"be rebuilt", file=sys.stderr, flush=True)
        remove(path)
        return None


def temporaries_in(folder: str) -> list[str]:
    """The ``atomic_file`` temporaries anywhere under ``folder`` (e.g. a ``.partial`` state)."""
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".tmp")]


def listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []

"""The artifact store: trained models and built datasets, keyed by their full configuration.

Layout under the work directory::

    <root>/<kind>/<key>/manifest.json   config, metrics, timings, versions; written last
    <root>/<kind>/<key>/...             the artifact's files (model.keras, arrays.npz, ...)
    <root>/<kind>/<key>.partial/        resumable state of an artifact being built

    <root>/<kind>/<key>.lock            held by the one process building it (see ``Lock``)

A key is ``<name>-<hash>`` of the canonical JSON of exactly what determines the artifact;
each kind puts its own algorithm version in that configuration (``train.VERSION``,
``construct.VERSION``, ...), so changing how one kind is built invalidates that kind and what
depends on it, and nothing else. An artifact directory is built under a temporary name and
renamed into place in one step, so a killed process never leaves a half-written artifact that
a later run trusts; an artifact counts as present only when its manifest is there, and a
finished artifact is never deleted or overwritten.

Every file of an artifact is hashed (SHA-256, streamed) into its manifest when it is written.
``get_or_build`` verifies an artifact the first time this process loads it (and again
whenever a file's size or mtime has changed since): a mismatch, a missing file, an unreadable
manifest or a file that fails to load names the artifact, moves its directory aside to
``<kind>/.<key>.corrupt-<time>`` (nothing is deleted), and rebuilds it, or, with
``on_corrupt="stop"``, raises ``CorruptArtifact``. Manifests written before checksums existed
(no ``files`` entry) are loaded unverified.

Processes sharing a store (several GPUs, a job array on a shared file system) coordinate
through lock files: ``get_or_build`` builds an artifact in at most one process at a time; the
others wait for it (or, with ``wait=False``, go on to other work). A lock whose holder died
(same host and its pid gone, or no heartbeat for ``stale_after`` seconds) is taken over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import sys
import uuid
import zipfile
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from entangle import preempt

MANIFEST = "manifest.json"
ON_CORRUPT = ("rebuild", "stop")
T = TypeVar("T")


_DAMAGED = object()


class CorruptArtifact(RuntimeError):
    """A stored artifact does not match its manifest (and ``on_corrupt="stop"``)."""


def file_digests(directory: str) -> dict:
    """{relative path: {"sha256", "size"}} of every file under ``directory`` but the manifest;
    files are read in 1 MiB blocks, so GB-sized sets hash in constant memory."""
    out = {}
    for folder, _, names in os.walk(directory):
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, directory)
            if rel == MANIFEST:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = {"sha256": h.hexdigest(), "size": os.path.getsize(path)}
    return out


def describe_os_error(e: OSError) -> str:
    """'<path>: <cause in words>' for a file-system fault (read-only, full, a file in the
    way, no permission)."""
    cause = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
             errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.ENOTDIR: "not a directory (a file is in the way)",
             errno.EEXIST: "exists and is not a directory"}.get(e.errno, e.strerror or str(e))
    return f"{e.filename or '(unknown path)'}: {cause}"


def default_workdir() -> str:
    return os.environ.get("ENTANGLE_WORKDIR", os.path.join(os.getcwd(), "entangle_work"))


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return repr(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def config_hash(config: Any) -> str:
    text = json.dumps(_canonical(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A content hash of arrays (shape, dtype and bytes): the data part of a key."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}|{a.dtype}|".encode())
        h.update(a.data)
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the entangle source tree (with '-dirty' for local changes), if in git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import keras
    import tensorflow as tf

    from entangle import __version__

    return {"entangle": __version__, "git_commit": git_commit(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def builder_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


ORPHAN_AGE = 86400.0  # a temporary without a checkable owner is an orphan after a day
_TAGGED = re.compile(r"\.tmp-(?P<pid>\d+)@(?P<host>.+)-[a-z0-9_]+(\.tmp)?$")


def _owner_tag() -> str:
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


def _tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path) if os.path.exists(path) else 0
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if os.path.exists(os.path.join(d, f)))


def _remove(path: str) -> None:
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
    for c in range(-(-n // chunk_size)):
        rows = slice(c * chunk_size, min(n, (c + 1) * chunk_size))
        path = os.path.join(workdir, f"chunk-{c:05d}.npz")
        if not os.path.exists(path):
            atomic_save_npz(path, **make(rows))
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

    Created with O_EXCL; holds the owner's host, pid and a token; a daemon thread refreshes its
    mtime every ``heartbeat`` seconds. A lock counts as stale when its host is this host and
    its pid is gone, or when it has not been refreshed for ``stale_after`` seconds; a stale
    lock is renamed away (one winner) and acquisition retried.
    """

    def __init__(self, path: str, *, heartbeat: float = 30.0, stale_after: float = 600.0):
        self.path, self.heartbeat, self.stale_after = path, heartbeat, stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _stale(self, owner: dict | None) -> bool:
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return False
        if owner is None:  # unreadable: being written, or garbage; judge by age alone
            return age > max(self.stale_after, 5.0)
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
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if not self._stale(owner):
                    return False
                self._break(owner)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**builder_id(), "token": self.token, "since": time.time()}, f)
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

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
                               prefix=f".{os.path.basename(path)}.tmp-{_owner_tag()}-")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: colleagues sharing a store read it
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_npz(path: str, **arrays) -> None:
    """np.savez through atomic_file."""
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def _temporaries_in(folder: str) -> list[str]:
    """The ``atomic_file`` temporaries anywhere under ``folder`` (e.g. a ``.partial`` state)."""
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".tmp")]


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


class Store:
    """A directory of artifacts keyed by configuration (see the module docstring)."""

    def __init__(self, root: str | None = None, on_corrupt: str = "rebuild",
                 log: Callable[[str], None] | None = None, create: bool = True):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}; got {on_corrupt!r}")
        self.root = os.path.abspath(os.path.expanduser(root or default_workdir()))
        self.on_corrupt = on_corrupt
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._verified: dict[tuple[str, str], tuple] = {}
        if create:
            os.makedirs(self.root, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "no such store", self.root)

    def summary(self) -> dict[str, tuple[int, int]]:
        """{kind: (artifacts, bytes)} of the finished artifacts."""
        out = {}
        for kind in _listdir(self.root):
            keys = self.list(kind)
            if keys:
                out[kind] = (len(keys), sum(_tree_size(self.path(kind, k)) for k in keys))
        return out

    def key(self, name: str, config: Any) -> str:
        return f"{name}-{config_hash(config)}"

    def path(self, kind: str, key: str) -> str:
        return os.path.join(self.root, kind, key)

    def partial_path(self, kind: str, key: str) -> str:
        """Where resumable state of an artifact being built lives (created on demand)."""
        path = self.path(kind, key) + ".partial"
        os.makedirs(path, exist_ok=True)
        return path

    def has(self, kind: str, key: str) -> bool:
        return os.path.exists(os.path.join(self.path(kind, key), MANIFEST))

    def manifest(self, kind: str, key: str) -> dict:
        path = os.path.join(self.path(kind, key), MANIFEST)
        if not os.path.exists(path):
            raise KeyError(f"no {kind} artifact {key!r} in {self.root}")
        with open(path) as f:
            return json.load(f)

    @contextlib.contextmanager
    def writing(self, kind: str, key: str, config: Any, **manifest) -> Iterator[str]:
        """Yields a fresh directory to fill; on success it becomes the artifact atomically.

        The manifest (config, the given fields, versions, builder, creation time) is written
        last, then the directory is renamed into place and any ``.partial`` state is removed.
        A finished artifact already in place is kept and the new copy dropped.
        """
        final = self.path(kind, key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{key}.tmp-{_owner_tag()}-")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the umask decides, as for mkdir
        try:
            yield tmp
            record = {"kind": kind, "key": key, "config": _canonical(config),
                      **_canonical(manifest), "files": file_digests(tmp),
                      "versions": versions(), "built_by": builder_id(),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            with atomic_file(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(record, f, indent=1)
            self._install(tmp, final)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final + ".partial", ignore_errors=True)

    def _install(self, tmp: str, final: str) -> None:
        """Renames ``tmp`` onto ``final`` unless a finished artifact is there already."""
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if os.path.exists(os.path.join(final, MANIFEST)):
                return  # finished by another process: never overwrite it
        aside = f"{os.path.dirname(final)}/.{os.path.basename(final)}.incomplete-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, aside)  # a copy without manifest, left by hand: move it aside
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.exists(os.path.join(final, MANIFEST)):
                raise

    def lock(self, kind: str, key: str, **kwargs) -> Lock:
        return Lock(self.path(kind, key) + ".lock", **kwargs)

    def get_or_build(self, kind: str, key: str, build: Callable[[], T], load: Callable[[], T],
                     *, wait: bool = True, poll: float = 2.0, log: Callable[[str], None] | None
                     = None, lock: bool = True) -> T:
        """``load()`` the artifact if present, else ``build()`` it holding its lock.

        While another live process holds the lock this waits for it to finish (then loads),
        or raises ``ArtifactBusy`` when ``wait`` is False. ``lock=False`` builds without
        locking (multi-worker non-chief tasks, which build alongside their chief).
        """
        announced = False
        while True:
            if self.has(kind, key):
                loaded = self._load_verified(kind, key, load)
                if loaded is not _DAMAGED:
                    return loaded
                continue  # moved aside: build it again
            if not lock:
                return build()
            held = self.lock(kind, key)
            if held.try_acquire():
                with held:
                    self.remove_orphans(kind, key)
                    if self.has(kind, key):
                        loaded = self._load_verified(kind, key, load)
                        if loaded is not _DAMAGED:
                            return loaded
                    return build()
            if not wait:
                raise ArtifactBusy(f"{kind}/{key} is being built by {held.owner()}")
            if log and not announced:
                owner = held.owner() or {}
                log(f"waiting for {owner.get('host')}:{owner.get('pid')} to finish {kind}/{key}")
                announced = True
            time.sleep(poll)

    # ------------------------------------------------------------------ housekeeping

    def remove_orphans(self, kind: str, key: str) -> int:
        """Removes the temporaries of ``kind/key`` (its ``.tmp-`` directories and the ``.tmp``
        files in its ``.partial`` state) whose owner is dead; the caller holds the key's
        lock. Returns the bytes freed (a killed construction leaves a full-size copy)."""
        freed = 0
        folder = os.path.join(self.root, kind)
        candidates = [os.path.join(folder, n) for n in _listdir(folder)
                      if n.startswith(f".{key}.tmp-")]
        candidates += _temporaries_in(self.path(kind, key) + ".partial")
        for path in candidates:
            if orphaned(path, other_hosts_dead=True):
                size = _tree_size(path)
                _remove(path)
                freed += size
                self._log(f"removed {path} ({size / 2**20:.1f} MiB), left by a dead process")
        return freed

    def housekeeping(self) -> list[dict]:
        """Everything under the root that no manifest owns, each as {path, what, bytes,
        removable}: temporaries (removable when their owner is dead), quarantined copies,
        leftovers of broken locks and incomplete copies (removable), and resumable
        ``.partial`` state (removable when no live process holds its lock)."""
        out = []
        for kind in _listdir(self.root):
            folder = os.path.join(self.root, kind)
            if not os.path.isdir(folder):
                continue
            for name in _listdir(folder):
                path = os.path.join(folder, name)
                what = removable = None
                if ".tmp-" in name and name.startswith("."):
                    live = not orphaned(path)
                    what, removable = f"temporary ({'owner alive' if live else 'owner dead'})",                         not live
                elif ".corrupt-" in name:
                    what, removable = "quarantined (damaged) copy", True
                elif ".incomplete-" in name or ".lock.stale-" in name:
                    what, removable = "leftover", True
                elif name.endswith(".partial"):
                    key = name[:-len(".partial")]
                    busy = self.lock(kind, key).held()
                    what = "resumable state" + (" (being built)" if busy else "")
                    removable = not busy
                    orphans = [p for p in _temporaries_in(path) if orphaned(p)]
                    out += [{"path": p, "what": "temporary (owner dead)",
                             "bytes": _tree_size(p), "removable": True} for p in orphans]
                if what:
                    out.append({"path": path, "what": what, "bytes": _tree_size(path),
                                "removable": removable})
        return out

    def gc(self, partial: bool = False) -> list[dict]:
        """Removes what ``housekeeping`` marks removable (resumable state only with
        ``partial``); returns what it removed."""
        gone = []
        for entry in self.housekeeping():
            if entry["removable"] and (partial or entry["what"] != "resumable state"):
                _remove(entry["path"])
                gone.append(entry)
        return gone

    # ------------------------------------------------------------------ integrity

    def _signature(self, kind: str, key: str, files: dict) -> tuple:
        sig = []
        for rel in sorted(files):
            try:
                st = os.stat(os.path.join(self.path(kind, key), rel))
                sig.append((rel, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                sig.append((rel, None, None))
        return tuple(sig)

    def verify(self, kind: str, key: str) -> list[str]:
        """What is wrong with a present artifact (empty: nothing). Hashes its files the first
        time this process asks, and again only when a file's size or mtime changed since."""
        try:
            files = self.manifest(kind, key).get("files")
        except (ValueError, OSError) as e:
            return [f"unreadable {MANIFEST} ({e})"]
        if files is None:
            return []  # written before checksums existed: nothing to compare
        sig = self._signature(kind, key, files)
        if self._verified.get((kind, key)) == sig:
            return []
        problems = []
        for rel, meta in sorted(files.items()):
            path = os.path.join(self.path(kind, key), rel)
            if not os.path.exists(path):
                problems.append(f"{rel} is missing")
            elif os.path.getsize(path) != meta["size"]:
                problems.append(f"{rel} has {os.path.getsize(path)} bytes, the manifest "
                                f"{meta['size']}")
        if not problems:
            actual = file_digests(self.path(kind, key))
            problems = [f"{rel} does not match its SHA-256 in the manifest"
                        for rel, meta in sorted(files.items())
                        if actual.get(rel, {}).get("sha256") != meta["sha256"]]
        if not problems:
            self._verified[(kind, key)] = sig
        return problems

    def intact(self, kind: str, key: str) -> bool:
        """Whether a present artifact matches its manifest; if not, it is moved aside
        (``quarantine``) and False returned."""
        problems = self.verify(kind, key)
        if problems:
            self.quarantine(kind, key, problems)
        return not problems

    def _load_verified(self, kind: str, key: str, load: Callable[[], T]):
        """``load()`` after ``verify``; a damaged artifact (or one that fails to load) is
        moved aside (or ``CorruptArtifact`` raised) and ``_DAMAGED`` returned."""
        problems = self.verify(kind, key)
        if not problems:
            try:
                return load()
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                problems = [f"it does not load: {type(e).__name__}: {e}"]
        self.quarantine(kind, key, problems)
        return _DAMAGED

    def quarantine(self, kind: str, key: str, problems: list[str]) -> str:
        """Moves a damaged artifact aside (never deletes it); says so, then raises
        ``CorruptArtifact`` when ``on_corrupt == "stop"``. Returns where it went."""
        final = self.path(kind, key)
        aside = os.path.join(os.path.dirname(final), f".{key}.corrupt-"
                             f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            os.rename(final, aside)
        self._verified.pop((kind, key), None)
        then = ("stopping (on_corrupt=stop)" if self.on_corrupt == "stop"
                else "it will be rebuilt")
        message = (f"damaged artifact {kind}/{key} at {final}: {'; '.join(problems)}. Moved "
                   f"aside to {aside}; {then}")
        if self.on_corrupt == "stop":
            raise CorruptArtifact(message)
        self._log(f"WARNING: {message}")
        return aside

    def record(self, kind: str, key: str, config: Any, **manifest) -> None:
        """An artifact that is only its manifest (e.g. an evaluation's metrics)."""
        with self.writing(kind, key, config, **manifest):
            pass

    # ------------------------------------------------------------------ arrays

    def save_arrays(self, kind: str, key: str, config: Any, arrays: dict[str, np.ndarray],
                    **manifest) -> str:
        with self.writing(kind, key, config, **manifest) as d:
            np.savez(os.path.join(d, "arrays.npz"), **arrays)
        return self.path(kind, key)

    def load_arrays(self, kind: str, key: str) -> dict[str, np.ndarray]:
        if not self.has(kind, key):
            raise KeyError(f"no {kind} artifact {key!r} in {self.root}")
        with np.load(os.path.join(self.path(kind, key), "arrays.npz")) as z:
            return {k: z[k] for k in z.files}

    def list(self, kind: str) -> list[str]:
        d = os.path.join(self.root, kind)
        if not os.path.isdir(d):
            return []
        return sorted(k for k in os.listdir(d) if self.has(kind, k))

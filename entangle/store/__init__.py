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
``on_corrupt="stop"``, raises ``CorruptArtifact``. The manifest carries the SHA-256 of its own
other fields (``manifest_sha256``), so an edited metric or file list is damage too.

Processes sharing a store (several GPUs, a job array on a shared file system) coordinate
through lock files: ``get_or_build`` builds an artifact in at most one process at a time; the
others wait for it (or, with ``wait=False``, go on to other work). A lock whose holder died
(same host and its pid gone, or no heartbeat for ``stale_after`` seconds) is taken over.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import sys
import uuid
import zipfile
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from entangle.runtime import preempt
from entangle.runtime.atomic import (ArtifactBusy, Lock, atomic_file, builder_id, listdir, orphaned,
                             owner_tag, remove, temporaries_in, tree_size, umask)

MANIFEST = "manifest.json"
ON_CORRUPT = ("rebuild", "stop")
T = TypeVar("T")


_DAMAGED = object()


class CorruptArtifact(RuntimeError):
    """A stored artifact does not match its manifest (and ``on_corrupt="stop"``)."""


def file_sha256(path: str) -> str:
    """A file's SHA-256, read in 1 MiB blocks (GB-sized files hash in constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(directory: str) -> dict:
    """{relative path: {"sha256", "size"}} of every file under ``directory`` but the
    manifest."""
    out = {}
    for folder, _, names in os.walk(directory):
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, directory)
            if rel != MANIFEST:
                out[rel] = {"sha256": file_sha256(path), "size": os.path.getsize(path)}
    return out


def manifest_digest(record: dict) -> str:
    """The SHA-256 of a manifest's canonical JSON without its own ``manifest_sha256``."""
    body = {k: v for k, v in record.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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


AUDIT_LOG = "ENTANGLE_AUDIT_LOG"


def audit(event: str, kind: str, key: str) -> None:
    """With ``$ENTANGLE_AUDIT_LOG`` set, appends one JSON line per build start and end (built
    or stopped; time, host, pid): how the chaos benchmark proves that no artifact is built twice at once. One
    short ``O_APPEND`` write per line, so processes sharing the file never interleave."""
    path = os.environ.get(AUDIT_LOG)
    if path:
        line = json.dumps({"event": event, "kind": kind, "key": key, "time": time.time(),
                           **builder_id()}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


# Artifacts this process has hashed and found intact: (store root, kind, key) -> the size and
# mtime of each file when it was hashed. One cache per process, so any number of Store objects
# on one root (one per Experiment, figure or study) hash each artifact once.
_VERIFIED: dict[tuple[str, str, str], tuple] = {}


class Store:
    """A directory of artifacts keyed by configuration (see the module docstring)."""

    def __init__(self, root: str | None = None, on_corrupt: str = "rebuild",
                 log: Callable[[str], None] | None = None, create: bool = True):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}; got {on_corrupt!r}")
        self.root = os.path.abspath(os.path.expanduser(root or default_workdir()))
        self.on_corrupt = on_corrupt
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if create:
            os.makedirs(self.root, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "no such store", self.root)

    def summary(self) -> dict[str, tuple[int, int]]:
        """{kind: (artifacts, bytes)} of the finished artifacts."""
        out = {}
        for kind in listdir(self.root):
            keys = self.list(kind)
            if keys:
                out[kind] = (len(keys), sum(tree_size(self.path(kind, k)) for k in keys))
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
        tmp = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{key}.tmp-{owner_tag()}-")
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; the umask decides, as for mkdir
        try:
            yield tmp
            record = {"kind": kind, "key": key, "config": _canonical(config),
                      **_canonical(manifest), "files": file_digests(tmp),
                      "versions": versions(), "built_by": builder_id(),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            record["manifest_sha256"] = manifest_digest(record)
            with atomic_file(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(record, f, indent=1)
            if self._install(tmp, final):   # hashed just now: this process need not again
                _VERIFIED[(self.root, kind, key)] = self._signature(kind, key, record["files"])
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final + ".partial", ignore_errors=True)

    def _install(self, tmp: str, final: str) -> bool:
        """Renames ``tmp`` onto ``final`` unless a finished artifact is there already; True
        when ``tmp`` became the artifact."""
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if os.path.exists(os.path.join(final, MANIFEST)):
                return False  # finished by another process: never overwrite it
        aside = f"{os.path.dirname(final)}/.{os.path.basename(final)}.incomplete-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, aside)  # a copy without manifest, left by hand: move it aside
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, final)
            return True
        except OSError:
            if not os.path.exists(os.path.join(final, MANIFEST)):
                raise
            return False

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
                    audit("build", kind, key)
                    try:
                        out = build()
                    except BaseException:
                        audit("stopped", kind, key)     # preempted or failed: lock released
                        raise
                    audit("built", kind, key)
                    return out
            if not wait:
                raise ArtifactBusy(f"{kind}/{key} is being built by {held.owner()}")
            if log and not announced:
                owner = held.owner() or {}
                log(f"waiting for {owner.get('host')}:{owner.get('pid')} to finish {kind}/{key}")
                announced = True
            preempt.sleep(poll, f"while waiting for {kind}/{key}")

    # ------------------------------------------------------------------ housekeeping

    def remove_orphans(self, kind: str, key: str) -> int:
        """Removes the temporaries of ``kind/key`` (its ``.tmp-`` directories and the ``.tmp``
        files in its ``.partial`` state) whose owner is dead; the caller holds the key's
        lock. Returns the bytes freed (a killed construction leaves a full-size copy)."""
        freed = 0
        folder = os.path.join(self.root, kind)
        candidates = [os.path.join(folder, n) for n in listdir(folder)
                      if n.startswith(f".{key}.tmp-")]
        candidates += temporaries_in(self.path(kind, key) + ".partial")
        for path in candidates:
            if orphaned(path, other_hosts_dead=True):
                size = tree_size(path)
                remove(path)
                freed += size
                self.log(f"removed {path} ({size / 2**20:.1f} MiB), left by a dead process")
        return freed

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

    def verify(self, kind: str, key: str) -> builtins.list[str]:
        """What is wrong with a present artifact (empty: nothing). Hashes its files the first
        time this process asks, and again only when a file's size or mtime changed since."""
        try:
            record = self.manifest(kind, key)
        except (ValueError, OSError) as e:
            return [f"unreadable {MANIFEST} ({e})"]
        if not isinstance(record, dict) or "manifest_sha256" not in record:
            return [f"{MANIFEST} carries no checksum of itself"]
        if manifest_digest(record) != record["manifest_sha256"]:
            return [f"{MANIFEST} does not match its own SHA-256 (edited or damaged)"]
        files = record.get("files")
        if not isinstance(files, dict):
            return [f"{MANIFEST} lists no files"]
        sig = self._signature(kind, key, files)
        if _VERIFIED.get((self.root, kind, key)) == sig:
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
            _VERIFIED[(self.root, kind, key)] = sig
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

    def quarantine(self, kind: str, key: str, problems: builtins.list[str]) -> str:
        """Moves a damaged artifact aside (never deletes it); says so, then raises
        ``CorruptArtifact`` when ``on_corrupt == "stop"``. Returns where it went."""
        final = self.path(kind, key)
        aside = os.path.join(os.path.dirname(final), f".{key}.corrupt-"
                             f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            os.rename(final, aside)
        _VERIFIED.pop((self.root, kind, key), None)
        then = ("stopping (on_corrupt=stop)" if self.on_corrupt == "stop"
                else "it will be rebuilt")
        message = (f"damaged artifact {kind}/{key} at {final}: {'; '.join(problems)}. Moved "
                   f"aside to {aside}; {then}")
        if self.on_corrupt == "stop":
            raise CorruptArtifact(message)
        self.log(f"WARNING: {message}")
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

    def list(self, kind: str) -> builtins.list[str]:  # the builtin: ``list`` is this method
        d = os.path.join(self.root, kind)
        if not os.path.isdir(d):
            return []
        # hidden names are temporaries and quarantined copies, never artifacts
        return sorted(k for k in os.listdir(d) if not k.startswith(".") and self.has(kind, k))

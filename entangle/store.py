"""The artifact store: trained models and built datasets, keyed by their full configuration.

Layout under the work directory::

    <root>/<kind>/<key>/manifest.json   config, metrics, timings, versions; written last
    <root>/<kind>/<key>/...             the artifact's files (model.keras, arrays.npz, ...)
    <root>/<kind>/<key>.partial/        resumable state of an artifact being built

A key is ``<name>-<hash>`` where the hash covers the canonical JSON of the configuration and
``CODE_VERSION``. An artifact directory is built under a temporary name and renamed into
place in one step, so a killed process never leaves a half-written artifact that a later run
trusts; an artifact counts as present only when its manifest is there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Iterator

import numpy as np

# Bump when a change alters what an artifact contains (so old artifacts are not reused).
CODE_VERSION = "1"
MANIFEST = "manifest.json"


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
    text = json.dumps({"config": _canonical(config), "code_version": CODE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A content hash of arrays (shape, dtype and bytes): the data part of a key."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}|{a.dtype}|".encode())
        h.update(a.data)
    return h.hexdigest()[:16]


def versions() -> dict:
    import keras
    import tensorflow as tf

    return {"entangle_code": CODE_VERSION, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb"):
    """Yields a temporary file beside ``path``; on success it is renamed onto ``path``.

    A process killed mid-write leaves at most a stray temporary file, never a partial ``path``.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_npz(path: str, **arrays) -> None:
    """np.savez through atomic_file."""
    with atomic_file(path) as f:
        np.savez(f, **arrays)


class Store:
    """A directory of artifacts keyed by configuration (see the module docstring)."""

    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(os.path.expanduser(root or default_workdir()))
        os.makedirs(self.root, exist_ok=True)

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

        The manifest (config, the given fields, versions, creation time) is written last,
        then the directory is renamed into place and any ``.partial`` state is removed.
        """
        final = self.path(kind, key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{key}.tmp-")
        try:
            yield tmp
            record = {"kind": kind, "key": key, "config": _canonical(config),
                      **_canonical(manifest), "versions": versions(),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            with atomic_file(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(record, f, indent=1)
            if os.path.exists(final):  # an older incomplete copy without manifest
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final + ".partial", ignore_errors=True)

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

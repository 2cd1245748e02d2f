"""Shared fixtures: tiny models and synthetic data at 16 px so the suite stays fast on a CPU."""

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One user cache for the whole run, shared by pytest-xdist's workers: probes of an op are
# timed once per run, not once per test, and nothing reaches the real ~/.cache. A test that
# fakes rates, or needs a cold record, takes ``own_cache``.
os.environ["ENTANGLE_CACHE"] = os.path.join(
    tempfile.gettempdir(),
    f"entangle-test-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID') or os.getpid()}")

# The cores split between pytest-xdist's workers (and the binaries they start, which inherit
# this environment): a worker's TensorFlow would otherwise run as many intra-op, inter-op and
# oneDNN threads as the machine has cores, and the workers' threads contend. Measured on the
# 2-core AMD EPYC (Zen 5), 2 workers over test_train, test_attacks and test_robustify: 159 s
# with the default threads, 127 s with one each, the same 76 tests passing.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, _THREADS)

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# The shared end-to-end stores: a test that uses one is marked slow (setup.cfg), so that
# ``-m "not slow"`` builds none of them.
SLOW_FIXTURES = ("smoke_table", "smoke_transfer", "cifar_paper")


def pytest_collection_modifyitems(items):
    for item in items:
        if set(SLOW_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def run_shared_dir(tmp_path_factory, name: str):
    """A folder that every pytest-xdist worker of this run shares (fresh per run). A store
    there is built once: the store's own locks split the work between workers that ask for it
    at once, and a worker that comes later finds it built."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(exist_ok=True)
    return path


def built_once(tmp_path_factory, name: str, build) -> tuple:
    """(folder, text): ``build(folder)``'s text, computed by the first pytest-xdist worker of
    this run that asks and read back by the others, so that a module's smoke store is built
    once per run, not once per worker its tests are spread over. Tests that change the store
    work on a ``copy_store`` of it."""
    import fcntl

    folder = run_shared_dir(tmp_path_factory, name)
    done = folder.parent / f"{name}.out"
    # an flock, not the store's own locks: this guards the fixture's whole build and its text
    with open(folder.parent / f"{name}.lock", "w") as lock:
        asked = time.time()
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            _timeline("wait", name, asked, time.time())
        else:
            text = build(folder)
            done.with_suffix(".partial").write_text(text)
            os.replace(done.with_suffix(".partial"), done)
    return folder, done.read_text()


def copy_store(source, target):
    """A copy of a shared store for a test that adds to it or damages it (locks left out)."""
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.lock"))
    return target


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A user cache of this test's own (no op rates remembered), for this process and the
    binaries it starts with os.environ."""
    path = tmp_path / "user-cache"
    monkeypatch.setenv("ENTANGLE_CACHE", str(path))
    return path


def run_python(*args, cwd=ROOT, env=None, timeout=600, input=None, fresh=False):
    """``python args`` (``-m module ...`` or ``-c code ...``), output captured, as
    ``subprocess.run`` returns it; forked from a server that has imported TensorFlow and the
    package (``forkserver``) unless ``fresh`` asks for a new interpreter."""
    import sys

    import forkserver

    return forkserver.run([sys.executable, *args], cwd=cwd, env=env, timeout=timeout,
                          input=input, fresh=fresh)


def popen_python(*args, cwd=ROOT, env=None, stdin=None, stdout=None, stderr=None,
                 fresh=False):
    """``subprocess.Popen([python, *args], text=True, ...)``, forked as ``run_python`` is."""
    import sys

    import forkserver

    return forkserver.popen([sys.executable, *args], cwd=cwd, env=env, stdin=stdin,
                            stdout=stdout, stderr=stderr, fresh=fresh)


def run_binary(binary, *args, env=None, timeout=600, check=False, fresh=False):
    """``python -m experiments.<binary> args`` from the repository root, output captured;
    ``check``: assert it exited 0, showing the end of its output if not."""
    proc = run_python("-m", f"experiments.{binary}", *args, env=env or ENV, timeout=timeout,
                      fresh=fresh)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _timeline(kind: str, name: str, start: float, end: float):
    """One line of the run's timeline (``benchmarks/suite_timeline.py``): which worker spent
    [start, end] on what. Written only when $ENTANGLE_TEST_TIMELINE names a file."""
    path = os.environ.get("ENTANGLE_TEST_TIMELINE")
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(path, "a") as f:   # one short append per line: workers do not interleave
            f.write(f"{worker}\t{kind}\t{name}\t{start:.3f}\t{end:.3f}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.time()
    yield
    _timeline("test", item.nodeid, start, time.time())


def pytest_sessionfinish(session, exitstatus):
    import forkserver

    forkserver.close_all()


def smoke_flags(*args, flagfile="smoke.cfg"):
    """Fresh FlagValues with every entangle flag, parsed from a shipped flagfile plus
    ``args`` (paths in args are taken as given; the flagfile's own are relative to it)."""
    from absl import flags

    from entangle import flags as entangle_flags

    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    entangle_flags.parse([f"--flagfile={entangle_flags.flagfile(flagfile)}", *args], fv)
    return fv


def colour_dataset(n=384, size=16, num_classes=3, seed=0):
    """Class c = noisy grey image whose channel c is brighter by 0.2: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    x = 0.4 + 0.08 * rng.standard_normal((n, size, size, 3))
    x[np.arange(n), :, :, y] += 0.2
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def trained_tiny():
    """A tiny ResNet v2 (depth 11, width 4) trained on colour_dataset: (model, x_test, y_test)."""
    import keras
    from entangle.core import models, seeding

    x, y = colour_dataset(1024)
    with seeding.seeded(0):       # the caller's random state is restored afterwards
        model = models.resnet_v2(11, (16, 16, 3), 3, width=4)
        model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    xt, yt = colour_dataset(128, seed=1)
    return model, xt, yt


def tensorboard_tags(run: str) -> set:
    """Every summary tag written into a TensorBoard run folder."""
    import tensorflow as tf

    tags = set()
    for name in os.listdir(run):
        for record in tf.data.TFRecordDataset(os.path.join(run, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(v.tag for v in event.summary.value)
    return tags


def flip_byte(path, at=None):
    """Inverts one byte of a file (its middle by default): the damage a bad disk or a bad
    copy leaves, with size and name unchanged."""
    size = os.path.getsize(path)
    at = size // 2 if at is None else at
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))

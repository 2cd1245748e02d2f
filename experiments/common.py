"""Start-up shared by the binaries: CPU speed defaults, quiet TensorFlow logs, table mains."""

import os
import sys


def configure_environment():
    """oneDNN on (1.8x faster training on x86 CPUs here) and TF's C++ logs off, before TF loads."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def with_default_flagfile(argv, name):
    """argv with ``--flagfile=name`` first, so that the user's flags (and flagfiles) override it."""
    return argv[:1] + [f"--flagfile={name}"] + argv[1:]


def results_dir(f, name: str) -> str:
    """--results_dir, or <workdir>/results/<name>-<dataset>-eps<eps>-seed<seed>."""
    from entangle.store import default_workdir

    if f.results_dir:
        return f.results_dir
    dataset = "folder" if f.dataset.startswith("folder:") else f.dataset
    return os.path.join(f.workdir or default_workdir(), "results",
                        f"{name}-{dataset}-seed{f.seed}")


def fail(message: str, quick_hint: str):
    """Exit with a clear message (no traceback)."""
    print(f"error: {message}\n\n{quick_hint}", file=sys.stderr)
    sys.exit(2)


def run_main(argv, body, failures: dict | None = None, usage_errors: tuple = ()):
    """The binaries' shared main: no positional arguments; threads and the distribution
    strategy first (both must precede TensorFlow's start-up); then ``body()``. An exception of a type
    in ``failures`` exits with its message and that hint; a bad value (ValueError,
    FileNotFoundError, or ``usage_errors``) is a usage error."""
    from absl import app

    import flags as entangle_flags
    from entangle import train

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    failures = failures or {}
    try:
        train.configure_threads(entangle_flags.FLAGS.inter_op_threads)
        train.get_strategy(entangle_flags.FLAGS.strategy)
        return body()
    except tuple(failures) as e:
        fail(str(e), next(h for t, h in failures.items() if isinstance(e, t)))
    except (ValueError, FileNotFoundError, *usage_errors) as e:
        raise app.UsageError(str(e))

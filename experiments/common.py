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


def results_dir(f, name: str, table: bool = False) -> str:
    """--results_dir, or <workdir>/results/<name>-<dataset>[-eps<eps>-<columns>]-seed<seeds>:
    every distinct table (dataset, robust-row eps, columns, seeds) gets its own folder."""
    import hashlib

    import flags as entangle_flags
    from entangle.store import default_workdir

    if f.results_dir:
        return f.results_dir
    dataset = (f"folder-{os.path.basename(os.path.normpath(f.dataset[7:]))}"
               if f.dataset.startswith("folder:") else f.dataset)
    parts = [name, dataset]
    if table:
        columns = f.columns if f.columns in ("paper", "extended") else \
            "cols" + hashlib.sha256(f.columns.encode()).hexdigest()[:8]
        parts += [f"eps{entangle_flags.table_config(f).eps:g}", columns]
    parts.append("seed" + "-".join(str(s) for s in entangle_flags.seeds(f)))
    return os.path.join(f.workdir or default_workdir(), "results", "-".join(parts))


def provenance(f) -> dict:
    """What a results JSON records of the command: its argv, flagfiles and every flag."""
    import flags as entangle_flags

    return {"argv": sys.argv, "flagfiles": list(entangle_flags.FLAGFILES),
            "flags": {k: v for k, v in f.flag_values_dict().items()
                      if isinstance(v, (str, int, float, bool, list, type(None)))}}


def dataset_label(f) -> str:
    """The dataset as a title names it: CIFAR-10, ImageNet-9, planted, or the folder's name."""
    if f.dataset.startswith("folder:"):
        return f"folder {os.path.basename(os.path.normpath(f.dataset[7:]))}"
    return {"cifar10": "CIFAR-10", "imagenet9": "ImageNet-9"}.get(f.dataset, f.dataset)


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
    from entangle.store import CorruptArtifact

    failures = {CorruptArtifact: "Its directory was moved aside, not deleted. Rerun without "
                "--on_corrupt=stop to rebuild it.", **(failures or {})}
    try:
        train.configure_threads(entangle_flags.FLAGS.inter_op_threads)
        train.get_strategy(entangle_flags.FLAGS.strategy)
        return body()
    except tuple(failures) as e:
        fail(str(e), next(h for t, h in failures.items() if isinstance(e, t)))
    except (ValueError, FileNotFoundError, *usage_errors) as e:
        raise app.UsageError(str(e))

"""Start-up shared by the binaries: CPU speed defaults, quiet TensorFlow logs, table mains."""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading


# TensorFlow's C++ start-up lines, printed before its logging honours TF_CPP_MIN_LOG_LEVEL:
# the absl pre-initialisation warning, INFO/WARNING lines (oneDNN, CUDA stubs, once per
# shared library) and the "failed call to cuInit" / factory-registration errors of a machine
# without a GPU.
_TF_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+\.cc:\d+\] .*"
    r"|E\d{4} [\d:.]+\s+\d+ [\w./-]+\.cc:\d+\] (failed call to cuInit|Unable to "
    r"register cu\w+ factory).*)$")


class _StartupFilter:
    """Routes file descriptor 2 through a pipe while TensorFlow loads and finds its devices,
    dropping its C++ start-up noise and passing every other line through in order."""

    def __init__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe:
            for line in pipe:
                if not _TF_NOISE.match(line.decode(errors="replace").rstrip("\r\n")):
                    os.write(self._saved, line)

    def stop(self) -> None:
        """Puts the real stderr back (idempotent) and forwards what is still in the pipe."""
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the pump sees EOF
        self._thread.join(timeout=10)
        os.close(self._saved)
        self._saved = None


_FILTER: _StartupFilter | None = None


def configure_environment():
    """oneDNN on (1.8x faster training on x86 CPUs here) and TF's C++ logs off, before TF loads.

    TensorFlow prints some start-up lines before it reads TF_CPP_MIN_LOG_LEVEL; those are
    filtered out until ``run_main`` has found the devices, unless the user set
    TF_CPP_MIN_LOG_LEVEL below 2 (asking for them)."""
    global _FILTER
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2" and _FILTER is None:
        _FILTER = _StartupFilter()


def quiet_startup_done():
    """TensorFlow has loaded and found its devices: stderr goes straight through again, and
    TF's Python warnings about first traces of each new model's functions are dropped (every
    model the pipeline builds traces its own predictor and attack once; that is expected)."""
    import logging

    if _FILTER is not None:
        import tensorflow as tf

        tf.config.list_logical_devices()  # cuInit and friends happen here, inside the filter
        _FILTER.stop()
    tf_logger = logging.getLogger("tensorflow")
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") >= "2":
        tf_logger.addFilter(lambda r: "triggered tf.function retracing" not in r.getMessage())
    tf_logger.propagate = False  # TF's handler prints it; absl's root handler would repeat it


def with_default_flagfile(argv, name):
    """argv with ``--flagfile=name`` first, so that the user's flags (and flagfiles) override it."""
    return argv[:1] + [f"--flagfile={name}"] + argv[1:]


def results_dir(f, name: str, table: bool = False, extra: list | None = None) -> str:
    """--results_dir, or <workdir>/results/<name>-<dataset>[-eps<eps>-<columns>][-<extra>]
    -seed<seeds>-c<hash>: readable, and keyed by every flag that changes the results
    (``flags.results_configuration``), so no two configurations share a folder."""
    from entangle import flags as entangle_flags
    from entangle.store import config_hash, default_workdir

    if f.results_dir:
        return f.results_dir
    dataset = (f"folder-{os.path.basename(os.path.normpath(f.dataset[7:]))}"
               if f.dataset.startswith("folder:") else f.dataset)
    parts = [name, dataset]
    if table:
        columns = f.columns if f.columns in ("paper", "extended") else tag("cols", f.columns)
        parts += [f"eps{entangle_flags.table_config(f).eps:g}", columns]
    parts += list(extra or [])
    parts.append("seed" + ("-".join(str(s) for s in entangle_flags.seeds(f)) if table
                           else str(f.seed)))
    parts.append("c" + config_hash(entangle_flags.results_configuration(f))[:8])
    return os.path.join(f.workdir or default_workdir(), "results", "-".join(parts))


def tag(prefix: str, text: str) -> str:
    """A short, stable folder-name part for a flag's free-form value (columns, sources)."""
    import hashlib

    return prefix + hashlib.sha256(text.encode()).hexdigest()[:8]


def provenance(f) -> dict:
    """What a results JSON records of the command: its argv, flagfiles and every flag, and
    where it ran (the CPU and GPUs, TensorFlow, Keras, the precision each model kind used)."""
    import keras
    import tensorflow as tf

    from entangle import flags as entangle_flags
    from entangle.runtime import hardware

    return {"argv": sys.argv, "flagfiles": list(entangle_flags.FLAGFILES),
            "hardware": hardware.describe(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "precision": hardware.choose_precision(f.precision)[0],
            "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
            "flags": {k: v for k, v in f.flag_values_dict().items()
                      if isinstance(v, (str, int, float, bool, list, type(None)))}}


def dataset_label(f) -> str:
    """The dataset as a title names it: CIFAR-10, ImageNet-9, planted, or the folder's name."""
    if f.dataset.startswith("folder:"):
        return f"folder {os.path.basename(os.path.normpath(f.dataset[7:]))}"
    return {"cifar10": "CIFAR-10", "imagenet9": "ImageNet-9"}.get(f.dataset, f.dataset)


def write(result, writer, out: str, *args) -> None:
    """``writer(result, out, *args)`` through ``report.write_results``, under this run's
    configuration; sets ``result.files`` and ``result.write_error`` for ``finish``."""
    from entangle import flags as entangle_flags
    from entangle import report

    result.files, result.write_error = report.write_results(
        writer, result, out, *args,
        configuration=entangle_flags.results_configuration(entangle_flags.FLAGS))


def finish(result):
    """The closing lines of a binary: what it built, how long, where the files are; after
    them exit 1 if the results folder could not be written (the result was still shown)."""
    files = ", ".join(result.files.values()) or "none"
    if hasattr(result, "built"):
        print(f"\nbuilt here: {len(result.built)} artifacts; {result.seconds:.0f}s; files: "
              f"{files}")
    else:
        print(f"\nfiles: {files}")
    if result.write_error:
        fail(result.write_error, code=1)


def estimate_and_exit(argv, experiment: str, exp_cfg, make_cfg, title: str,
                      failures: dict | None = None):
    """--estimate: probe the plan's kinds of work, print the projection as Markdown, exit 0.
    ``exp_cfg`` and ``make_cfg`` are called inside ``run_main`` (threads and strategy first)."""
    from entangle.store import estimate
    from entangle.studies import projections
    from entangle.runtime import hardware
    from entangle import flags as entangle_flags

    images = entangle_flags.estimate_images(entangle_flags.FLAGS.estimate_images)
    est = run_main(argv, lambda: projections.project(exp_cfg(), experiment, make_cfg(),
                                                     images=images), failures)
    if images:
        title += f", projected for {images[0]:,} training and {images[1]:,} test images"
    print()
    print(estimate.markdown(est, title, hardware.describe()))
    sys.exit(0)


def fail(message: str, quick_hint: str = "", code: int = 2):
    """Exit with a clear message (no traceback)."""
    print(f"error: {message}" + (f"\n\n{quick_hint}" if quick_hint else ""), file=sys.stderr)
    sys.exit(code)


def log_precision_choice(f) -> None:
    """With --precision=auto, says which precision the hardware chose and why."""
    if f.precision == "auto" and not f.quiet:
        from entangle.runtime import hardware

        chosen, why = hardware.choose_precision("auto")
        print(f"precision: {chosen} ({why})", flush=True)


def log_tf32(f) -> None:
    """On a GPU, says whether TensorFloat-32 is allowed (``--tf32``) and what that means."""
    import tensorflow as tf

    if "tf32" not in f or f.quiet or not tf.config.list_logical_devices("GPU"):
        return
    print("TF32: " + ("on (--tf32: float32 convolutions round their inputs to 10 mantissa bits; "
                      "small-eps perturbations are mostly rounded away)" if f.tf32 else
                      "off (exact float32; --tf32 trades small-eps accuracy for speed)"),
          flush=True)


def _gpu_locks(f) -> str:
    """Where --gpu=auto's processes on one store hold their GPUs: <workdir>/.locks."""
    from entangle import store as store_lib

    workdir = f["workdir"].value if "workdir" in f else None
    return os.path.join(os.path.abspath(os.path.expanduser(
        workdir or store_lib.default_workdir())), ".locks")


def _say(f):
    """A log that prints unless --quiet."""
    quiet = "quiet" in f and f.quiet
    return lambda m: None if quiet else print(m, flush=True)


def run_main(argv, body, failures: dict | None = None, usage_errors: tuple = ()):
    """The binaries' shared main: no positional arguments; threads and the distribution
    strategy first (both must precede TensorFlow's start-up); then ``body()``, with SIGTERM
    and SIGINT stopping at the next safe point (``entangle.runtime.preempt``). An exception of a type
    in ``failures`` exits with its message and that hint; a bad value (ValueError,
    FileNotFoundError, or ``usage_errors``) is a usage error; a file-system fault (read-only,
    full, a file in the way) is one line and exit code 1."""
    from absl import app

    from entangle import flags as entangle_flags
    from entangle.runtime import distribution, preempt

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from entangle.store import CorruptArtifact

    failures = {CorruptArtifact: "Its directory was moved aside, not deleted. Rerun without "
                "--on_corrupt=stop to rebuild it.", **(failures or {})}
    try:
        with preempt.handling():
            f = entangle_flags.FLAGS
            distribution.start_up(f.inter_op_threads, f.tf32 if "tf32" in f else None,
                                  f.gpu if "gpu" in f else None, f.strategy,
                                  _gpu_locks(f) if "gpu" in f else None, log=_say(f))
            quiet_startup_done()
            log_precision_choice(entangle_flags.FLAGS)
            log_tf32(entangle_flags.FLAGS)
            return body()
    except preempt.Preempted as e:
        print(f"{os.path.basename(argv[0])}: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except tuple(failures) as e:
        fail(str(e), next(h for t, h in failures.items() if isinstance(e, t)))
    except (ValueError, FileNotFoundError, *usage_errors) as e:
        raise app.UsageError(str(e))
    except OSError as e:
        from entangle.store import describe_os_error

        fail(f"cannot write {describe_os_error(e)}", code=1)

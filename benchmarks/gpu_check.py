"""GPU check: the paper path on one GPU under float32 (TF32 off and on), mixed_float16,
mixed_bfloat16 and XLA, and over MirroredStrategy on every visible GPU; then the measured
paper-scale projections of Table 1 and Table 5; one Markdown report.

    bash benchmarks/gpu_check.sh                    # report: benchmarks/results/gpu_check.md
    bash benchmarks/gpu_check.sh --images=500 --out=/tmp/gpu.md -- --robustify_steps=40

Each row is flags/cifar10_paper.cfg on tfds mock CIFAR-10 (random images: the numbers time
the code path, they say nothing about accuracy) with ``--images`` per split, one epoch and
columns R_0, R_1/2, in a fresh store and its own process. The single-GPU rows see one device
(``--gpu=0``) under the default strategy, so a many-GPU host does not turn them into
MirroredStrategy; XLA runs there only (the trainer refuses it under MirroredStrategy). A row
that fails or times out is reported as such and the next one runs; the report is rewritten
after every row. Flags after ``--`` go to every row (e.g. fewer steps on a CPU). The
projections use mock data of the paper's sizes (50,000 training, 10,000 test images) and the
probes of ``--estimate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Row:
    """One configuration of the paper path: its precision, TF32, XLA, and devices."""
    precision: str
    tf32: bool = False
    jit: bool = False
    mirrored: bool = False

    def devices(self, gpus: int) -> str:
        if self.mirrored:
            return f"MirroredStrategy, {gpus} GPU(s)" if gpus else "MirroredStrategy, CPU"
        return "1 GPU" if gpus else "CPU"

    def flags(self, gpus: int) -> list[str]:
        gpu = "all" if self.mirrored else ("0" if gpus else "none")
        return [f"--precision={self.precision}", "--tf32" if self.tf32 else "--notf32",
                "--jit_compile" if self.jit else "--nojit_compile", f"--gpu={gpu}",
                "--strategy=" + ("mirrored" if self.mirrored else "default")]


ROWS = (Row("float32"), Row("float32", tf32=True), Row("mixed_float16"),
        Row("mixed_bfloat16"), Row("mixed_float16", jit=True),
        Row("mixed_float16", mirrored=True))

SLICE = """
import json, sys, time
import tensorflow_datasets as tfds
from absl import flags
from entangle import flags as ef
from entangle.runtime import distribution, hardware
from entangle.studies import entanglement
fv = flags.FlagValues(); ef.define_all(fv); ef.parse(sys.argv[2:], fv)
distribution.start_up(fv.inter_op_threads, fv.tf32, fv.gpu, fv.strategy, log=lambda m: None)
t0 = time.time()
with tfds.testing.mock_data(num_examples=int(sys.argv[1])):
    if fv.estimate:
        from entangle.store import estimate
        from entangle.studies import projections
        est = projections.project(ef.experiment_config(fv), "table", ef.table_config(fv),
                                  log=lambda m: None)
        print(json.dumps({"markdown": estimate.markdown(est, "", hardware.describe())}))
    else:
        r = entanglement.run_table(ef.experiment_config(fv), ef.table_config(fv),
                                   log=lambda m: None)
        print(json.dumps({"seconds": time.time() - t0, "built": len(r.built),
                          "test": r.cells["standard"]["Test"]["accuracy"]}))
"""


def _run(images: int, args: list[str], timeout: float) -> dict:
    """One row in its own process: its JSON line, or {"error": why} when it failed or ran past
    ``timeout`` seconds (the row's process is killed; the next row still runs)."""
    flagfile = os.path.join(ROOT, "flags", "cifar10_paper.cfg")
    try:
        proc = subprocess.run([sys.executable, "-c", SLICE, str(images),
                               f"--flagfile={flagfile}", "--quiet", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = (proc.stdout or "").strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        return {"error": (tail[-1] if tail else f"exit code {proc.returncode}")[:300]}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"no result line: {lines[-1][:200]}"}


def _gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _devices() -> str:
    import tensorflow as tf

    from entangle.runtime import hardware

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
             for g in gpus]
    return (f"TensorFlow {tf.__version__}; {len(gpus)} GPU(s): {', '.join(names) or 'none'}; "
            f"CPU: {hardware.describe()}")


def _write(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="mock images per split")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "gpu_check.md"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
    parser.add_argument("--no_estimate", action="store_true", help="skip the projections")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    gpus = _gpu_count()
    lines = ["# GPU check", "", f"{time.strftime('%Y-%m-%d %H:%M')}; {_devices()}.", "",
             f"Paper path slice: flags/cifar10_paper.cfg on mock CIFAR-10, {args.images} images "
             f"per split, 1 epoch, columns R_0 and R_1/2, a fresh store each"
             + (f"; also {' '.join(extra)}" if extra else "") + ". TF32 applies to float32 "
             "matmuls and convolutions on Ampere and newer GPUs only.", "",
             "| Devices | Precision | TF32 | XLA | Wall time | Artifacts | Standard Test acc. |",
             "|---|---|---|---|---|---|---|"]
    base = None
    for row in ROWS:
        with tempfile.TemporaryDirectory() as work:
            r = _run(args.images, [f"--workdir={work}", "--epochs=1", "--columns=0,1/2",
                                   *row.flags(gpus), *extra], args.timeout)
        cells = (f"| {row.devices(gpus)} | {row.precision} | {'on' if row.tf32 else 'off'} | "
                 f"{'on' if row.jit else 'off'} | ")
        if "error" in r:
            lines.append(cells + f"failed: {r['error']} | | |")
        else:
            base = base or r["seconds"]
            lines.append(cells + f"{r['seconds']:.0f} s ({base / r['seconds']:.2f}x the first "
                         f"row that ran) | {r['built']} | {100 * r['test']:.1f} % |")
        print(lines[-1], flush=True)
        _write(args.out, lines)
    if not args.no_estimate:
        for columns, table in (("paper", "Table 1"), ("extended", "Table 5")):
            with tempfile.TemporaryDirectory() as work:
                r = _run(50_000, [f"--workdir={work}", f"--columns={columns}",
                                  "--test_limit=10000", "--estimate", *extra], args.timeout)
            lines += ["", f"## Paper-scale projection: {table}", ""]
            lines.append(r.get("markdown", f"failed: {r.get('error')}").replace(
                "## Projected time: \n", ""))
            _write(args.out, lines)
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()

"""GPU check: the paper path under float32 and mixed_float16, with and without XLA, over
MirroredStrategy on every visible GPU, and the measured paper-scale projections of Table 1
and Table 5; one Markdown report.

    bash benchmarks/gpu_check.sh                    # report: benchmarks/results/gpu_check.md
    bash benchmarks/gpu_check.sh --images=500 --out=/tmp/gpu.md -- --robustify_steps=40

Each slice is flags/cifar10_paper.cfg on tfds mock CIFAR-10 (random images: the numbers time
the code path, they say nothing about accuracy) with ``--images`` per split, one epoch and
columns R_0, R_1/2, in a fresh store and its own process. Flags after ``--`` go to every
slice (e.g. fewer steps on a CPU). The projections use mock data of the paper's sizes
(50,000 training, 10,000 test images) and the probes of ``--estimate``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICES = (("float32", False, "auto"), ("mixed_float16", False, "auto"),
          ("mixed_float16", True, "auto"), ("mixed_float16", False, "mirrored"))

SLICE = """
import json, sys, time
import tensorflow_datasets as tfds
from absl import flags
from entangle import flags as ef
from entangle.core import train
from entangle.runtime import distribution, hardware
from entangle.studies import entanglement
fv = flags.FlagValues(); ef.define_all(fv); ef.parse(sys.argv[2:], fv)
distribution.configure_threads(fv.inter_op_threads)
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
    flagfile = os.path.join(ROOT, "flags", "cifar10_paper.cfg")
    proc = subprocess.run([sys.executable, "-c", SLICE, str(images), f"--flagfile={flagfile}",
                           "--quiet", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _devices() -> str:
    import tensorflow as tf

    from entangle.runtime import hardware

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
             for g in gpus]
    return (f"TensorFlow {tf.__version__}; {len(gpus)} GPU(s): {', '.join(names) or 'none'}; "
            f"CPU: {hardware.describe()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="mock images per split")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "gpu_check.md"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per slice")
    parser.add_argument("--no_estimate", action="store_true", help="skip the projections")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    lines = ["# GPU check", "", f"{time.strftime('%Y-%m-%d %H:%M')}; {_devices()}.", "",
             f"Paper path slice: flags/cifar10_paper.cfg on mock CIFAR-10, {args.images} images "
             f"per split, 1 epoch, columns R_0 and R_1/2, a fresh store each"
             + (f"; also {' '.join(extra)}" if extra else "") + ".", "",
             "| Precision | XLA | Strategy | Wall time | Artifacts | Standard Test acc. |",
             "|---|---|---|---|---|---|"]
    base = None
    for precision, jit, strategy in SLICES:
        with tempfile.TemporaryDirectory() as work:
            flags = [f"--workdir={work}", "--epochs=1", "--columns=0,1/2",
                     f"--precision={precision}", f"--strategy={strategy}",
                     "--jit_compile" if jit else "--nojit_compile", *extra]
            r = _run(args.images, flags, args.timeout)
        if "error" in r:
            lines.append(f"| {precision} | {jit} | {strategy} | failed: {r['error']} | | |")
            continue
        base = base or r["seconds"]
        lines.append(f"| {precision} | {'on' if jit else 'off'} | {strategy} | "
                     f"{r['seconds']:.0f} s ({base / r['seconds']:.2f}x the first row) | "
                     f"{r['built']} | {100 * r['test']:.1f} % |")
        print(lines[-1], flush=True)
    if not args.no_estimate:
        for columns, table in (("paper", "Table 1"), ("extended", "Table 5")):
            with tempfile.TemporaryDirectory() as work:
                r = _run(50_000, [f"--workdir={work}", f"--columns={columns}",
                                  "--test_limit=10000", "--estimate", *extra], args.timeout)
            lines += ["", f"## Paper-scale projection: {table} (float32)", ""]
            lines.append(r.get("markdown", f"failed: {r.get('error')}").replace(
                "## Projected time: \n", ""))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()

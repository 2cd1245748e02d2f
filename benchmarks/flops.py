"""FLOPs of the paper-scale plans, their floor on this CPU and a projection for GPUs.

    python benchmarks/flops.py                  # Tables 1, 5, 2 and transfer, paper flagfiles
    python benchmarks/flops.py --peak_tflops=989 --utilisation=0.15,0.3

Counts each plan artifact by artifact, from the plan a run would build (the same
``--estimate_images`` sizes as the README), with forward FLOPs per image counted from each
model's layers (2 x multiply-adds of every convolution and dense layer; batch norm and
element-wise ops are not counted). Per kind of work, per image:

- training step: 3 forward passes (forward, and the backward pass's two products);
- adversarial training step with k PGD steps: 3 + 2k (each PGD step a forward pass and an
  input gradient, which needs no weight gradients);
- attack, construction and robustification steps: 2 (the same input-gradient pass).

This is the floor: no work is counted twice, nothing idles. The floor time divides it by the
2048 x 2048 float32 matmul rate measured in this run. Op rates remembered on this machine
(``--estimate`` probes, ``op_rates.json``) give the measured time of the same work: their
ratio to the floor is what the CPU path loses. The GPU rows divide the FLOPs by a stated peak
times an assumed utilisation: they are arithmetic, not measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402,F401  (TensorFlow speed defaults before it loads)

PLANS = [  # (label, flagfile, experiment, extra flags, (train, test) images)
    ("Table 1 (CIFAR-10, eps 0.5)", "cifar10_paper.cfg", "table", [], (50_000, 10_000)),
    ("Table 5 (CIFAR-10, extended columns)", "cifar10_paper.cfg", "table",
     ["--columns=extended"], (50_000, 10_000)),
    ("Table 2 (ImageNet-9, eps 1)", "imagenet9_paper.cfg", "table", [], (260_000, 10_150)),
    ("Transfer (Figures 5/6)", "cifar10_paper.cfg", "transfer", [], (50_000, 10_000)),
]
PASSES = {"train": lambda k: 3, "adv_train": lambda k: 3 + 2 * k, "attack": lambda k: 2,
          "robustify": lambda k: 2}


def plan_flops(flagfile: str, experiment: str, extra: list, images: tuple) -> dict:
    """{op signature: {"kind", "flops", "images", "forward"}} of a plan, and the models'
    forward FLOPs by op signature."""
    from absl import flags

    import tensorflow as tf

    from entangle import flags as entangle_flags
    from entangle.core import train
    from entangle.studies import pipeline, projections

    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    entangle_flags.parse([f"--flagfile={entangle_flags.flagfile(flagfile)}", *extra,
                          f"--workdir={tempfile.mkdtemp(prefix='entangle-flops-')}",
                          "--quiet"], fv)
    exp = pipeline.Experiment(entangle_flags.experiment_config(fv))
    exp.use_placeholder_data(*images)
    cfg = {"table": entangle_flags.table_config,
           "transfer": entangle_flags.transfer_config}[experiment](fv)
    out, forward = {}, {}
    for item in projections.plan_of(exp, experiment, cfg):
        for op, n in item.work:
            sig = op.signature()
            if sig not in forward:
                config = dataclasses.replace(op.config, pretrained=False)  # offline
                model, _ = train.build_for_training(config, tf.distribute.get_strategy(),
                                                    op.input_shape, op.num_classes)
                forward[sig] = common.forward_flops(model)
            per = PASSES[op.kind](op.config.attack_steps) * forward[sig]
            row = out.setdefault(sig, {"kind": op.kind, "flops": 0.0, "images": 0.0,
                                       "forward": forward[sig], "op": op})
            row["flops"] += per * n
            row["images"] += n
    return out


def remembered_seconds(rows: dict) -> dict:
    """Seconds the op rates remembered on this host give each op's images (None: never
    measured here)."""
    from entangle import runtime
    from entangle.store import estimate

    path = os.path.join(runtime.cache_dir(), estimate.RATES)
    try:
        entries = json.load(open(path))
    except (OSError, ValueError):
        entries = {}
    out = {}
    for sig, row in rows.items():
        e = entries.get(f"{estimate.host_id()}|{sig}")
        out[sig] = None if not e else e["seconds_per_image"] * row["images"]
    return out


def probed_ratios(rows: dict, rounds: int, repeats: int = 3, matmul_n: int = 2048) -> dict:
    """{op signature: [ratio to its floor, one per round]}, every op timed now: each round
    times each op between two float32 matmul measurements and divides by the floor at their
    mean rate, so that a host whose speed changes for minutes at a time moves both sides of a
    ratio together."""
    from entangle.store import estimate

    out = {sig: [] for sig in rows}
    for r in range(rounds):
        for sig, row in rows.items():
            before = common.matmul_gflops("float32", matmul_n)
            rate = estimate.probe_op(row["op"], repeats)
            rate_fp32 = 1e9 * (before + common.matmul_gflops("float32", matmul_n)) / 2
            floor = PASSES[row["kind"]](row["op"].config.attack_steps) * row["forward"]
            out[sig].append(rate.seconds_per_image / (floor / rate_fp32))
            print(f"round {r + 1}/{rounds}: {sig}: {out[sig][-1]:.2f}x its floor "
                  f"(matmul {rate_fp32 / 1e9:.0f} GFLOP/s)", file=sys.stderr, flush=True)
    return out


def print_probed(rows: dict, ratios: dict, total: float) -> None:
    """The probed ratios per kind of work (each round, the median) and the plan's: the
    medians weighted by each kind's share of the FLOPs."""
    import statistics

    print("Timed now, each beside its own floor measurement:\n")
    print("| Work | Share | Ratio to the floor, each round | Median |")
    print("|---|---|---|---|")
    plan = 0.0
    for sig, r in sorted(rows.items(), key=lambda kv: -kv[1]["flops"]):
        median = statistics.median(ratios[sig])
        plan += median * r["flops"] / total
        print(f"| {sig} | {100 * r['flops'] / total:.0f} % | "
              + ", ".join(f"{x:.2f}x" for x in ratios[sig]) + f" | {median:.2f}x |")
    print(f"\nThe plan at the probed rates: {plan:.2f}x its floor.\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peak_tflops", type=float, default=989.0,
                        help="GPU peak for the projection, dense TFLOP/s (default: an H100 "
                        "SXM's bf16/fp16 tensor-core peak, 989)")
    parser.add_argument("--utilisation", default="0.15,0.3",
                        help="assumed fractions of that peak the thin ResNets reach")
    parser.add_argument("--gpus", default="1,8", help="GPUs to project for")
    parser.add_argument("--probe_rounds", type=int, default=0,
                        help="time Table 1's kinds of work now, this many rounds, each beside "
                        "its own floor measurement (the ratios then come from this run, not "
                        "from remembered op rates)")
    args = parser.parse_args()
    utilisation = [float(u) for u in args.utilisation.split(",")]
    gpus = [int(g) for g in args.gpus.split(",")]

    from entangle.runtime import hardware

    fp32, bf16 = (1e9 * common.matmul_gflops(d) for d in ("float32", "bfloat16"))
    print(f"# FLOPs and floors ({hardware.describe()}; {time.strftime('%Y-%m-%d')})\n")
    print(f"2048 x 2048 matmul, measured now: float32 {fp32 / 1e9:.0f} GFLOP/s (the floor's "
          f"rate), bfloat16 {bf16 / 1e9:.0f} GFLOP/s.\n")
    for label, flagfile, experiment, extra, images in PLANS:
        rows = plan_flops(flagfile, experiment, extra, images)
        measured = remembered_seconds(rows)
        total = sum(r["flops"] for r in rows.values())
        print(f"## {label}: {total / 1e15:,.0f} PFLOP "
              f"({images[0]:,} training, {images[1]:,} test images)\n")
        print("| Work | Forward GFLOP/image | Images (x steps) | PFLOP | Share | Floor here "
              "| Measured rate here | Ratio |")
        print("|---|---|---|---|---|---|---|---|")
        known = 0.0
        for sig, r in sorted(rows.items(), key=lambda kv: -kv[1]["flops"]):
            floor = r["flops"] / fp32
            m = measured[sig]
            known += m or 0.0
            print(f"| {sig} | {r['forward'] / 1e9:.3f} | {r['images']:.3g} | "
                  f"{r['flops'] / 1e15:,.1f} | {100 * r['flops'] / total:.0f} % | "
                  f"{floor / 3600:,.0f} h | "
                  + (f"{m / 3600:,.0f} h | {m / floor:.2f}x |" if m else "not probed | |"))
        floor = total / fp32
        print(f"\nFloor on this CPU: {floor / 3600:,.0f} h"
              + (f"; the remembered op rates give {known / 3600:,.0f} h for the probed work"
                 if known else "") + ".\n")
        if args.probe_rounds and label == PLANS[0][0]:
            print_probed(rows, probed_ratios(rows, args.probe_rounds), total)
        print("| GPUs | " + " | ".join(f"at {100 * u:.0f} % of {args.peak_tflops:g} TFLOP/s"
                                        for u in utilisation) + " |")
        print("|---|" + "---|" * len(utilisation))
        for g in gpus:
            cells = [f"{total / (g * args.peak_tflops * 1e12 * u) / 3600:,.1f} h"
                     for u in utilisation]
            print(f"| {g} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()

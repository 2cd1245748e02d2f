"""Appendix Tables 3 and 4 rendered from the paper-scale flagfiles (the values live there)."""

from __future__ import annotations

import math

from absl import flags

from entangle import flags as entangle_flags

DATASETS = (("CIFAR", "cifar10_paper.cfg"), ("ImageNet", "imagenet9_paper.cfg"))
TABLE3_KINDS = (("Standard", "standard"), ("Robust", "robust"), ("Zero-robust", "zero_robust"),
                ("Neg-robust", "neg_robust"), ("Victim models", "victim"))
TABLE3_HEADER = ("Model", "Architecture", "Batch size", "Epochs", "Learning rate", "LR decay",
                 "Data augmentation", "Pretraining")
TABLE4_HEADER = ("Dataset", "Maximum allowed change (L2 norm from seed)", "Number of steps",
                 "Step size")


def parse_flagfile(name: str) -> flags.FlagValues:
    """A fresh FlagValues holding every entangle flag, parsed from one shipped flagfile."""
    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    fv(["hparams"] + entangle_flags.expand_flagfiles([f"--flagfile={entangle_flags.flagfile(name)}"]))
    return fv


def _arch(name: str) -> str:
    if name.startswith("resnet") and name.endswith("v2"):
        return f"ResNet{name[6:-2]} (v2)"
    return name


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _num(x: float) -> str:
    if math.isinf(x):
        return "∞"
    return f"{x:.0e}".replace("e-0", "e-") if x < 0.01 else f"{x:g}"


def table3_rows() -> list[tuple[str, ...]]:
    rows = []
    for ds_label, cfg_file in DATASETS:
        fv = parse_flagfile(cfg_file)
        for label, kind in TABLE3_KINDS:
            per = entangle_flags.per_kind
            epochs = str(per(fv.epochs, kind, int))
            if entangle_flags.kinds_on(fv.early_stopping, kind):
                epochs += "*"
            arch = "Misc" if kind == "victim" else _arch(per(fv.arch, kind))
            rows.append((f"{label} ({ds_label})", arch, str(per(fv.batch_size, kind, int)),
                         epochs, _num(per(fv.learning_rate, kind, float)),
                         _yes(fv.lr_decay != "none"),
                         _yes(entangle_flags.kinds_on(fv.augment, kind)),
                         _yes(kind == "victim" and fv.victim_weights == "imagenet")))
    return rows


def table4_rows() -> list[tuple[str, ...]]:
    rows = []
    for ds_label, cfg_file in DATASETS:
        fv = parse_flagfile(cfg_file)
        entries = [("Robustified", fv.robustify_eps, fv.robustify_steps, fv.robustify_step_size),
                   ("Zero-robust", fv.construct_eps, fv.construct_steps, fv.construct_step_size),
                   ("Neg-robust", fv.construct_eps, fv.construct_steps, fv.construct_step_size),
                   ("Untargeted Adversarial Examples", fv.transfer_eps, fv.transfer_steps,
                    fv.transfer_step_size),
                   ("Targeted Adversarial Examples", fv.transfer_eps, fv.transfer_steps,
                    fv.transfer_step_size)]
        rows += [(f"{name} ({ds_label})", _num(eps), str(steps), _num(step))
                 for name, eps, steps, step in entries]
    return rows


def _markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table3_markdown() -> str:
    return "Table 3. Model parameters (from flags/*_paper.cfg)\n\n" + _markdown(TABLE3_HEADER,
                                                                              table3_rows())


def table4_markdown() -> str:
    return "Table 4. Constructed datasets (from flags/*_paper.cfg)\n\n" + _markdown(
        TABLE4_HEADER, table4_rows())

"""absl flag groups shared by every binary, and their conversion into typed library configs.

Binaries call the ``define_*_flags()`` they need, parse, then build configs with
``experiment_config(FLAGS)``; the library never reads FLAGS. Hyperparameters that differ by
model kind (Table 3) take a default plus per-kind overrides, e.g.
``--learning_rate=1e-3,zero_robust:1e-4,neg_robust:1e-4,victim:1e-4``; boolean per-kind
settings take the list of kinds they are on for (``--augment=standard,robust,victim``).
The paper's values live in the flagfiles beside this file (``*.cfg``), each with its source.

Flagfiles are expanded here, not by absl (``expand_flagfiles``), so that a path inside a
flagfile (a nested ``--flagfile``, ``--dataset=folder:PATH``, ``--data_dir``) is relative to
that flagfile, and a shipped flagfile can be named from any directory
(``--flagfile=cifar10_quick.cfg``).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from entangle import (construct, data, entanglement, mistakes, models, paper, pipeline,
                      planted_study, robustify, train, transfer)
from entangle import store as store_lib

FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_KINDS = pipeline.KINDS + ("victim",)
VICTIM_WEIGHTS = ("imagenet", "none")


PATH_FLAGS = ("data_dir", "workdir", "image_cache_dir")


def flagfile(name: str) -> str:
    """Absolute path of a flagfile shipped in flags/ (e.g. 'cifar10_paper.cfg')."""
    return os.path.join(HERE, name)


def _find_flagfile(path: str, base: str | None) -> str:
    """A flagfile path: relative to ``base`` (the including flagfile's folder) or the working
    directory, else a file shipped in flags/."""
    path = os.path.expanduser(path)
    candidates = [path] if os.path.isabs(path) else (
        ([os.path.join(base, path)] if base else []) + [os.path.abspath(path),
                                                        os.path.join(HERE, path),
                                                        os.path.join(HERE, os.path.basename(path))])
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c)
    raise flags.Error(f"--flagfile: cannot find {path!r} (looked in "
                      f"{', '.join(dict.fromkeys(os.path.dirname(c) or '.' for c in candidates))}"
                      f"); shipped flagfiles: {', '.join(sorted(f for f in os.listdir(HERE) if f.endswith('.cfg')))}")


def _rebase(arg: str, base: str) -> str:
    """Makes a relative path in a flagfile line relative to the flagfile's folder."""
    name, _, value = arg.lstrip("-").partition("=")
    if name == "dataset" and value.startswith("folder:"):
        p = value[len("folder:"):]
        return arg if os.path.isabs(os.path.expanduser(p)) else \
            f"--dataset=folder:{os.path.normpath(os.path.join(base, p))}"
    if name in PATH_FLAGS and value and not os.path.isabs(os.path.expanduser(value)):
        return f"--{name}={os.path.normpath(os.path.join(base, value))}"
    return arg


def expand_flagfiles(argv: list[str], base: str | None = None, _depth: int = 0) -> list[str]:
    """argv with every ``--flagfile=F`` replaced, in place, by F's flags (recursively)."""
    if _depth > 10:
        raise flags.Error("--flagfile: nesting deeper than 10 (a cycle?)")
    out = []
    for arg in argv:
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = _find_flagfile(arg.split("=", 1)[1], base)
            folder = os.path.dirname(path)
            with open(path) as f:
                lines = [l.strip() for l in f]
            lines = [l for l in lines if l and not l.startswith(("#", "//"))]
            out += expand_flagfiles([_rebase(l, folder) for l in lines], folder, _depth + 1)
        else:
            out.append(arg)
    return out


def parse(args: list[str], fv=FLAGS) -> list[str]:
    """Parses ``args`` (no program name) into ``fv`` with flagfiles expanded; raises
    flags.Error on a bad value."""
    return fv(["entangle"] + expand_flagfiles(list(args)))


FLAGFILES: list[str] = []  # the top-level flagfiles of the parsed command line, in order


def scale_name() -> str:
    """The scale a run is at: the last flagfile on its command line (its name)."""
    return os.path.basename(FLAGFILES[-1]) if FLAGFILES else "no flagfile"


def parse_flags(argv: list[str], fv=FLAGS) -> list[str]:
    """absl ``flags_parser`` for the binaries: expands flagfiles, parses, exits cleanly (no
    traceback) with the flag's message on a bad value."""
    FLAGFILES[:] = [a.split("=", 1)[1] for a in argv[1:]
                    if a.startswith(("--flagfile=", "-flagfile="))]
    try:
        return fv(argv[:1] + expand_flagfiles(argv[1:]))
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        print("Pass --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(1)


def per_kind(text: str, kind: str, cast=str):
    """The value for ``kind`` in 'default,kind:value,...' (ValueError on a bad entry).

    A victim architecture name (``xception``) is a kind of its own that falls back to
    ``victim``: '--epochs=100,victim:6,xception:2'.
    """
    default, overrides = None, {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if ":" in item:
            k, v = item.split(":", 1)
            if k not in MODEL_KINDS + models.VICTIMS:
                raise ValueError(f"unknown model kind {k!r} (allowed: {', '.join(MODEL_KINDS)}"
                                 f", or a victim name)")
            overrides[k] = cast(v)
        else:
            default = cast(item)
    value = overrides.get(kind)
    if value is None and kind in models.VICTIMS:
        value = overrides.get("victim")
    if value is None:
        value = default
    if value is None:
        raise ValueError(f"no value for model kind {kind!r} in {text!r}")
    return value


def kinds_on(text: str, kind: str) -> bool:
    """Whether ``kind`` is in a kind list ('all', 'none' or 'standard,robust,...')."""
    items = {s.strip() for s in text.split(",") if s.strip()}
    bad = items - set(MODEL_KINDS) - {"all", "none"}
    if bad:
        raise ValueError(f"unknown model kinds {sorted(bad)} (allowed: all, none, "
                         f"{', '.join(MODEL_KINDS)})")
    return "all" in items or kind in items


def _validator(name: str, check, message: str, flag_values=FLAGS):
    flags.register_validator(name, check, message=f"--{name}: {message}",
                             flag_values=flag_values)


def _eps_ok(allow_inf: bool):
    """Validator of an L2 radius: a number >= 0, not NaN, finite unless ``allow_inf``."""
    def check(value):
        if value is None:
            return True
        return value == value and value >= 0 and (allow_inf or value != float("inf"))
    return check


def _eps_validators(fv, names: dict):
    """The same check for every ``*_eps`` flag: {name: whether inf (no bound) is allowed}."""
    for name, allow_inf in names.items():
        _validator(name, _eps_ok(allow_inf), "must be a number >= 0 (an L2 radius in [0, 1] "
                   f"pixel units){'; inf for no bound' if allow_inf else ', finite'}", fv)


def _per_kind_ok(cast):
    """Validator: every entry parses with ``cast`` and is > 0, and every kind has a value."""
    def check(text):
        try:
            return all(per_kind(text, k, cast) > 0 for k in MODEL_KINDS)
        except ValueError:
            return False
    return check


def _kinds_ok(text):
    try:
        kinds_on(text, "standard")
        return True
    except ValueError:
        return False


def define_data_flags(fv=FLAGS):
    flags.DEFINE_string("dataset", "cifar10", f"Dataset: {data.dataset_names()}.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "tfds data directory with prepared datasets.",
                        flag_values=fv)
    flags.DEFINE_bool("download", False, "Let tfds download missing data (needs network).",
                      flag_values=fv)
    flags.DEFINE_integer("train_limit", None, "Stratified subset of the training split.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("test_limit", None, "Stratified subset of the test split.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("validation_fraction", 0.1,
                       "Fraction of train held out for early stopping (only models that "
                       "early-stop lose it; the others train on every image).",
                       lower_bound=0.001, upper_bound=0.5, flag_values=fv)
    flags.DEFINE_enum("validation_data", "constructed", list(pipeline.VALIDATION_SOURCES),
                      "What early-stopped zero-/neg-robust models validate on: a held-out part "
                      "of the constructed set (labels = targets; unbiased) or held-out clean "
                      "images with true labels (what Table 1 reports).", flag_values=fv)
    flags.DEFINE_bool("imagenet9_balance", False, "Class-balanced subsample of train and "
                      "test (every class cut to the smallest; for ImageNet-9, 58 % dogs).",
                      flag_values=fv)
    flags.DEFINE_integer("data_seed", 0, "Seed for subsets and the validation split.",
                         flag_values=fv)
    flags.DEFINE_bool("allow_empty_classes", False, "Folder datasets: keep class folders "
                      "without images as classes (they change chance); by default an error.",
                      flag_values=fv)
    flags.DEFINE_string("image_cache_dir", None, "Cache of decoded image folders "
                        "(default ~/.cache/entangle or $ENTANGLE_CACHE).", flag_values=fv)
    flags.DEFINE_string("planted_features", "ABC", "Planted dataset: which patterns are present "
                        "(A robust, B entangled non-robust, C artifact).", flag_values=fv)
    flags.DEFINE_integer("planted_image_size", 32, "Planted dataset image size.", lower_bound=8,
                         flag_values=fv)
    flags.DEFINE_integer("planted_num_classes", 10, "Planted dataset classes.", lower_bound=2,
                         flag_values=fv)
    flags.DEFINE_integer("planted_train_size", 5000, "Planted train images.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("planted_test_size", 1000, "Planted test images.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("planted_robust_norm", 6.0, "L2 norm of the robust pattern A.",
                       lower_bound=0, flag_values=fv)
    flags.DEFINE_float("planted_entangled_norm", 1.0, "L2 norm of the entangled pattern B.",
                       lower_bound=0, flag_values=fv)
    flags.DEFINE_float("planted_artifact_norm", 1.0, "L2 norm of the artifact pattern C.",
                       lower_bound=0, flag_values=fv)
    flags.DEFINE_float("planted_robust_reliability", 1.0,
                       "Fraction of planted images whose robust pattern A is their own "
                       "class's (the rest carry another class's A).", flag_values=fv)

    def dataset_ok(name):
        return name in ("cifar10", "imagenet9", "planted") or (
            name.startswith("folder:") and len(name) > 7)
    _validator("dataset", dataset_ok, f"must be one of {data.dataset_names()}", fv)
    _validator("planted_features", lambda s: bool(s) and set(s) <= set("ABC"),
               "must be a non-empty subset of ABC", fv)
    _validator("planted_robust_reliability", lambda v: 0 < v <= 1, "must be in (0, 1]", fv)


def define_model_flags(fv=FLAGS):
    flags.DEFINE_string("arch", "resnet56v2", "Architecture per kind: resnet<9n+2>v2 or a "
                        "victim name; 'default,kind:arch,...'.", flag_values=fv)
    flags.DEFINE_integer("width", 16, "ResNet v2 base width (16 in the paper).", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_enum("pooling", "global", list(models.POOLINGS), "ResNet v2 pooling before "
                      "the logits: keras_example = AveragePooling2D(8)+Flatten (>= 32 px), "
                      "global = global average pooling.", flag_values=fv)
    flags.DEFINE_integer("victim_input_size", 0, "Victims resize inputs to this size inside the "
                         "model (0: the dataset's size, raised to the architecture's minimum).",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_list("victims", list(models.VICTIMS), "Victim architectures for transfer.",
                      flag_values=fv)
    flags.DEFINE_enum("victim_weights", "imagenet", list(VICTIM_WEIGHTS),
                      "Victims start from ImageNet weights (Table 3; the files must be in the "
                      "Keras cache when offline) or from scratch (none).", flag_values=fv)

    def arch_ok(text):
        try:
            for k in MODEL_KINDS:
                if k != "victim":
                    train.parse_arch(per_kind(text, k))
            return True
        except ValueError:
            return False
    _validator("arch", arch_ok, "must be resnet<depth>v2 (depth 9n+2) or a victim name, "
               "optionally per kind ('resnet56v2,zero_robust:resnet20v2')", fv)
    _validator("victims", lambda v: set(v) <= set(models.VICTIMS),
               f"must be a subset of {', '.join(models.VICTIMS)}", fv)


def define_train_flags(fv=FLAGS):
    flags.DEFINE_enum("kind", "standard", list(pipeline.KINDS), "Model kind to train.",
                      flag_values=fv)
    flags.DEFINE_float("eps", 0.0, "Adversarial training radius (L2, [0,1] pixels); robust "
                       "models only.", flag_values=fv)
    flags.DEFINE_string("batch_size", "200", "Global batch size per kind.", flag_values=fv)
    flags.DEFINE_string("epochs", "100", "Epochs per kind (an upper bound with early stopping).",
                        flag_values=fv)
    flags.DEFINE_string("learning_rate", "1e-3", "Adam learning rate per kind.", flag_values=fv)
    flags.DEFINE_enum("lr_decay", "step", list(train.LR_DECAYS),
                      "Learning-rate schedule (see entangle.train.learning_rate_at).",
                      flag_values=fv)
    flags.DEFINE_string("augment", "standard,robust,victim",
                        "Kinds trained with crop+flip augmentation.", flag_values=fv)
    flags.DEFINE_string("early_stopping", "zero_robust,neg_robust",
                        "Kinds that keep their best validation checkpoint.", flag_values=fv)
    flags.DEFINE_integer("patience", 10, "Early stopping patience, epochs.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("weight_decay", 1e-4, "L2 kernel regularisation of the ResNet v2 convs.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_enum("precision", "float32", list(train.PRECISIONS), "Keras dtype policy.",
                      flag_values=fv)
    flags.DEFINE_float("bn_momentum", 0.99, "Batch-norm moving-average momentum of the ResNets "
                       "(Keras' default 0.99).", lower_bound=0.0, upper_bound=0.999999,
                       flag_values=fv)
    flags.DEFINE_enum("bn_statistics", "recompute", list(train.BN_STATISTICS),
                      "After training, recompute every batch norm's statistics over the "
                      "training inputs (precise BN), or keep the moving averages.",
                      flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Training seed.", flag_values=fv)
    _eps_validators(fv, {"eps": False})
    _validator("batch_size", _per_kind_ok(int), "must be an integer > 0, optionally per kind ('200,victim:128')", fv)
    _validator("epochs", _per_kind_ok(int), "must be an integer > 0, optionally per kind ('200,victim:128')", fv)
    _validator("learning_rate", _per_kind_ok(float), "must be a number > 0, optionally per kind ('1e-3,zero_robust:1e-4')", fv)
    for name in ("augment", "early_stopping"):
        _validator(name, _kinds_ok, f"must be all, none or a list of {', '.join(MODEL_KINDS)}",
                   fv)


def define_attack_flags(fv=FLAGS):
    flags.DEFINE_integer("train_attack_steps", 16, "PGD steps per adversarial training batch.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("train_attack_step_size", 0.5, "PGD step size in adversarial training.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_bool("train_attack_random_start", False, "Random start for training PGD.",
                      flag_values=fv)
    flags.DEFINE_bool("train_attack_step_relative", False, "--train_attack_step_size is a "
                      "multiple of the model's eps (fast adversarial training: 1 step of 1.25 "
                      "with a random start), not an L2 length.", flag_values=fv)
    flags.DEFINE_float("construct_eps", 0.5, "Zero-/neg-robust construction: max L2 change.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("construct_steps", 200, "Zero-/neg-robust construction: PGD steps.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("construct_step_size", 0.1, "Zero-/neg-robust construction: step size.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_enum("zero_robust_targets", "all", list(construct.TARGET_MODES),
                      "Zero-robust targets: every class per image, or one random class.",
                      flag_values=fv)
    flags.DEFINE_float("robustify_eps", float("inf"), "Robustification: max L2 change.",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("robustify_steps", 400, "Robustification: steps.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("robustify_step_size", 0.05, "Robustification: step size.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_float("transfer_eps", 2.0, "Transfer attacks: max L2 change.", lower_bound=0.0,
                       flag_values=fv)
    flags.DEFINE_integer("transfer_steps", 100, "Transfer attacks: PGD steps.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("transfer_step_size", 0.1, "Transfer attacks: step size.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_integer("eval_attack_steps", 20, "PGD steps when reporting robust accuracy.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("attack_eps", None, "Report PGD accuracy at this eps (default: the "
                       "model's own eps; none for standard models).", lower_bound=0.0,
                       flag_values=fv)
    flags.DEFINE_float("eval_step_size_factor", 2.5, "Reporting PGD step = factor*eps/steps.",
                       lower_bound=1e-9, flag_values=fv)
    _eps_validators(fv, {"construct_eps": False, "robustify_eps": True, "transfer_eps": False,
                         "attack_eps": False})


def define_runtime_flags(fv=FLAGS):
    flags.DEFINE_enum("strategy", "auto", list(train.STRATEGIES),
                      "tf.distribute strategy; auto = mirrored on >1 GPU.", flag_values=fv)
    flags.DEFINE_bool("jit_compile", False, "Compile train and attack steps with XLA.",
                      flag_values=fv)
    flags.DEFINE_integer("eval_batch_size", 500, "Batch size for evaluation and attacks.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("workdir", None, "Artifact store directory (default ./entangle_work or "
                        "$ENTANGLE_WORKDIR).", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress output.", flag_values=fv)
    flags.DEFINE_enum("on_corrupt", "rebuild", list(store_lib.ON_CORRUPT), "A stored artifact "
                      "that does not match its manifest's checksums: move it aside and rebuild "
                      "it, or move it aside and stop.", flag_values=fv)
    flags.DEFINE_string("inter_op_threads", "auto", "TensorFlow inter-op threads: auto (1 "
                        "without a GPU, which makes CPU training bit-reproducible; TF's "
                        "default with GPUs) or a number (0 = TF's default).", flag_values=fv)


def define_table_flags(fv=FLAGS):
    flags.DEFINE_string("columns", "paper", "R_eps columns: paper (0,1/16,1/4,1/2,1), "
                        "extended (Tables 5/6: eleven), or a comma list of eps.", flag_values=fv)
    flags.DEFINE_list("rows", list(entanglement.ROWS), "Table rows (classifiers).",
                      flag_values=fv)
    flags.DEFINE_bool("evaluate_generators", False, "Evaluate the generators of R_eps "
                      "themselves in every row, instead of independently trained twins.",
                      flag_values=fv)
    flags.DEFINE_enum("robust_row", "generator", list(entanglement.ROBUST_ROWS),
                      "The robust row: the eps-robust generator itself (Table 5's R_1/2 cell "
                      "equals its Test cell) or an independently trained twin.", flag_values=fv)
    flags.DEFINE_integer("evaluator_seed_offset", 1, "Seed offset of the independently trained "
                         "row classifiers.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("results_dir", None, "Where tables and figures go (default "
                        "<workdir>/results/<name>-<dataset>-eps<eps>-<columns>-seed<seed(s)>).",
                        flag_values=fv)
    flags.DEFINE_list("seeds", [], "Several training seeds on one store (e.g. 0,1,2): one table "
                      "per seed and their aggregate (mean and sd per cell, seeds held per "
                      "finding); overrides --seed.", flag_values=fv)
    flags.DEFINE_bool("generator_report", True, "Report each R_eps generator's clean and PGD "
                      "accuracy (PGD at its eps; the standard model at every column's eps).",
                      flag_values=fv)
    _validator("seeds", lambda v: all(t.strip().lstrip("-").isdigit() for t in v)
               and len(set(v)) == len(v), "must be a comma list of distinct integers", fv)
    _validator("columns", _columns_ok, "must be paper, extended or a comma list of eps >= 0",
               fv)
    _validator("rows", lambda r: bool(r) and set(r) <= set(entanglement.ROWS),
               f"must be a non-empty subset of {', '.join(entanglement.ROWS)}", fv)


def parse_columns(text: str) -> tuple[float, ...]:
    if text == "paper":
        return paper.PAPER_COLUMNS
    if text == "extended":
        return paper.EXTENDED_COLUMNS
    return tuple(_eps_value(t) for t in text.split(",") if t.strip())


def _eps_value(text: str) -> float:
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _columns_ok(text):
    try:
        cols = parse_columns(text)
        return bool(cols) and all(c >= 0 for c in cols)
    except (ValueError, ZeroDivisionError):
        return False


def table_config(f=FLAGS) -> entanglement.TableConfig:
    """The TableConfig of the parsed flags; --eps, when not given, is the paper's robust row
    (CIFAR-10 0.5, ImageNet-9 1.0). A given --eps must be a finite number > 0."""
    if f["eps"].present:
        eps = f.eps
        if not (eps > 0 and eps != float("inf")):
            raise ValueError(f"--eps (the robust row's L2 radius) must be a finite number > 0; "
                             f"got {eps}")
    else:
        eps = paper.ROBUST_ROW_EPS.get(f.dataset, 0.5)
    return entanglement.TableConfig(eps=eps, columns=parse_columns(f.columns),
                                    rows=tuple(f.rows),
                                    evaluate_generators=f.evaluate_generators,
                                    robust_row=f.robust_row,
                                    evaluator_seed_offset=f.evaluator_seed_offset,
                                    generator_report=f.generator_report)


def seeds(f=FLAGS) -> list[int]:
    """--seeds as integers, or [--seed] when not given."""
    return [int(t) for t in f.seeds] if f.seeds else [f.seed]


def define_transfer_flags(fv=FLAGS):
    flags.DEFINE_string("sources", "paper", "Source models of the transfer attacks, by eps (0: "
                        "the standard model): paper (0,1/16,1/4,1/2,1), extended or a comma "
                        "list.", flag_values=fv)
    flags.DEFINE_enum("attack", "per_source", list(transfer.MODES), "per_source: untargeted "
                      "and targeted PGD on each source alone (Figures 5/6); n_targeted: one "
                      "attack on all --sources at once, each towards its own target (Waseda "
                      "et al. 4.1).", flag_values=fv)
    flags.DEFINE_integer("target_seed", 0, "Seed of the targets (uniform over wrong classes).",
                         flag_values=fv)
    flags.DEFINE_integer("grid_images", 8, "Images per row of the adversarial-example grids.",
                         lower_bound=1, flag_values=fv)
    _validator("sources", _columns_ok, "must be paper, extended or a comma list of eps >= 0",
               fv)


def transfer_config(f=FLAGS) -> transfer.TransferConfig:
    """The TransferConfig of the parsed flags."""
    return transfer.TransferConfig(sources=parse_columns(f.sources), victims=tuple(f.victims),
                                   eps=f.transfer_eps, steps=f.transfer_steps,
                                   step_size=f.transfer_step_size, mode=f.attack,
                                   target_seed=f.target_seed, grid_images=f.grid_images)


def define_study_flags(fv=FLAGS):
    flags.DEFINE_list("feature_sets", ["ABC", "AB", "AC", "A"], "Planted study: the feature "
                      "sets, each letters of ABC (A robust, B entangled, C artifact).",
                      flag_values=fv)
    flags.DEFINE_list("study_seeds", ["0", "1"], "Planted study: seeds (each a planted world, "
                      "its data and models).", flag_values=fv)
    flags.DEFINE_integer("probe_size", 1000, "Planted study: images per probe set.",
                         lower_bound=1, flag_values=fv)
    _validator("feature_sets", lambda v: bool(v) and all(
        s and set(s) <= set("ABC") and len(set(s)) == len(s) for s in v),
        "must be a comma list of distinct letters of ABC (e.g. ABC,AB,AC,A)", fv)
    _validator("study_seeds", lambda v: bool(v) and all(t.strip().lstrip("-").isdigit()
                                                         for t in v) and len(set(v)) == len(v),
               "must be a comma list of distinct integers", fv)


def study_config(f=FLAGS) -> planted_study.StudyConfig:
    """The StudyConfig of the parsed flags (the table flags give eps, columns and rows)."""
    return planted_study.StudyConfig(feature_sets=tuple(f.feature_sets),
                                     seeds=tuple(int(t) for t in f.study_seeds),
                                     table=table_config(f), probe_size=f.probe_size)


def define_mistakes_flags(fv=FLAGS):
    flags.DEFINE_string("second_model", "seed", "Different mistakes: F2 is the standard model "
                        "with another seed ('seed') or a victim architecture trained from the "
                        f"same data ({', '.join(models.VICTIMS)}).", flag_values=fv)
    flags.DEFINE_float("mistakes_eps", 0.1, "Different mistakes: L2 budget of the N-targeted "
                       "attack (Waseda et al. 4.2: 0.1).", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("mistakes_steps", 100, "Different mistakes: PGD steps (4.2: 100).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("mistakes_step_size", 0.1, "Different mistakes: step size (4.2: 0.1).",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_enum("mistakes_targets", "distinct", ["distinct", "independent"],
                      "Different mistakes: Y1 uniform over all classes and Y2 uniform over the "
                      "others (distinct), or Y1, Y2 independent and uniform (Waseda 4.2: they "
                      "may coincide).", flag_values=fv)
    _eps_validators(fv, {"mistakes_eps": False})
    _validator("second_model", lambda v: v == "seed" or v in models.VICTIMS,
               f"must be 'seed' or one of {', '.join(models.VICTIMS)}", fv)


def mistakes_config(f=FLAGS) -> mistakes.MistakesConfig:
    """The MistakesConfig of the parsed flags."""
    return mistakes.MistakesConfig(second_model=f.second_model, eps=f.mistakes_eps,
                                   steps=f.mistakes_steps, step_size=f.mistakes_step_size,
                                   targets=f.mistakes_targets, target_seed=f.target_seed)


def define_all(fv=FLAGS):
    for define in (define_data_flags, define_model_flags, define_train_flags,
                   define_attack_flags, define_runtime_flags, define_table_flags,
                   define_transfer_flags, define_study_flags, define_mistakes_flags):
        define(fv)


def train_config(f, kind: str) -> train.TrainConfig:
    """The TrainConfig of a model kind (eps 0; the pipeline sets a robust model's eps), or of
    one victim architecture (``kind`` a victim name: its overrides, else the victims')."""
    victim = kind == "victim" or kind in models.VICTIMS
    group = "victim" if victim else kind
    return train.TrainConfig(
        arch=kind if kind in models.VICTIMS else per_kind(f.arch, kind), width=f.width,
        eps=0.0,
        attack_steps=f.train_attack_steps, attack_step_size=f.train_attack_step_size,
        attack_step_relative=f.train_attack_step_relative,
        attack_random_start=f.train_attack_random_start,
        batch_size=per_kind(f.batch_size, kind, int), epochs=per_kind(f.epochs, kind, int),
        learning_rate=per_kind(f.learning_rate, kind, float), lr_decay=f.lr_decay,
        augment=kinds_on(f.augment, group), early_stopping=kinds_on(f.early_stopping, group),
        patience=f.patience, weight_decay=f.weight_decay, pooling=f.pooling,
        bn_momentum=f.bn_momentum, bn_statistics=f.bn_statistics,
        pretrained=victim and f.victim_weights == "imagenet",
        input_size=f.victim_input_size if victim else 0,
        precision=f.precision, seed=f.seed)


def experiment_config(f=FLAGS) -> pipeline.ExperimentConfig:
    """All parsed flags as one typed ExperimentConfig."""
    planted = None
    if f.dataset == "planted":
        planted = data.PlantedConfig(
            image_size=f.planted_image_size, num_classes=f.planted_num_classes,
            train_size=f.planted_train_size, test_size=f.planted_test_size,
            features=f.planted_features, robust_norm=f.planted_robust_norm,
            entangled_norm=f.planted_entangled_norm, artifact_norm=f.planted_artifact_norm,
            robust_reliability=f.planted_robust_reliability, seed=f.data_seed)
    return pipeline.ExperimentConfig(
        data=pipeline.DataConfig(dataset=f.dataset, data_dir=f.data_dir, download=f.download,
                                 train_limit=f.train_limit, test_limit=f.test_limit,
                                 validation_fraction=f.validation_fraction,
                                 validation=f.validation_data, balance=f.imagenet9_balance,
                                 seed=f.data_seed,
                                 cache_dir=f.image_cache_dir, planted=planted,
                                 allow_empty_classes=f.allow_empty_classes),
        hparams={**{k: train_config(f, k) for k in MODEL_KINDS},
                 **{f"victim:{v}": train_config(f, v) for v in f.victims}},
        construct=construct.ConstructConfig(eps=f.construct_eps, steps=f.construct_steps,
                                            step_size=f.construct_step_size,
                                            targets=f.zero_robust_targets, seed=f.data_seed),
        robustify=robustify.RobustifyConfig(steps=f.robustify_steps,
                                            step_size=f.robustify_step_size,
                                            eps=f.robustify_eps, seed=f.data_seed),
        eval=pipeline.EvalConfig(attack_steps=f.eval_attack_steps,
                                 step_size_factor=f.eval_step_size_factor),
        runtime=train.RuntimeOptions(strategy=f.strategy, jit_compile=f.jit_compile,
                                     eval_batch_size=f.eval_batch_size, verbose=not f.quiet,
                                     on_corrupt=f.on_corrupt),
        workdir=f.workdir)

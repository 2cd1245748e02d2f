"""Data flags: which dataset, where it is, subsets, validation split, the planted world."""

from __future__ import annotations

from absl import flags

from entangle import data
from entangle.data import planted
from entangle.flags._checks import accepts, FLAGS, validator
from entangle.studies import pipeline


def define_data_flags(fv=FLAGS):
    flags.DEFINE_string("dataset", "cifar10", f"Dataset: {data.dataset_names()}.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "tfds data directory with prepared datasets.",
                        flag_values=fv)
    flags.DEFINE_enum("download", "auto", list(data.DOWNLOAD_MODES), "tfds data missing "
                      "from --data_dir: download it if a short connection attempt reaches the "
                      "download host (auto), always (yes) or never (no).", flag_values=fv)
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
                         lower_bound=0, upper_bound=2 ** 31 - 1, flag_values=fv)
    flags.DEFINE_bool("allow_empty_classes", False, "Folder datasets: keep class folders "
                      "without images as classes (they change chance); by default an error.",
                      flag_values=fv)
    flags.DEFINE_string("image_cache_dir", None, "Cache of decoded image folders "
                        "(default ~/.cache/entangle or $ENTANGLE_CACHE).", flag_values=fv)
    flags.DEFINE_string("planted_features", "ABC", "Planted dataset: which patterns are present "
                        "(A robust shape, B its texture: entangled, C artifact, D noise on A's "
                        "shape: co-located; B and D need A).", flag_values=fv)
    flags.DEFINE_integer("planted_image_size", 16, "Planted dataset image size (a multiple of "
                         "4).", lower_bound=16,
                         flag_values=fv)
    flags.DEFINE_integer("planted_num_classes", 10, "Planted dataset classes.", lower_bound=2,
                         flag_values=fv)
    flags.DEFINE_integer("planted_train_size", 5000, "Planted train images.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("planted_test_size", 1000, "Planted test images.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("planted_robust_norm", 4.0, "L2 norm of the robust pattern A.",
                       lower_bound=0, flag_values=fv)
    flags.DEFINE_float("planted_entangled_norm", 1.0, "L2 norm of the entangled pattern B (and D).",
                       lower_bound=0, flag_values=fv)
    flags.DEFINE_float("planted_artifact_norm", 1.0, "L2 norm of the artifact pattern C.",
                       lower_bound=0, flag_values=fv)
    flags.DEFINE_float("planted_robust_reliability", 1.0,
                       "Fraction of planted images whose shape is their own class's A alone "
                       "(the rest: a 50/50 blend with another class's shape).", flag_values=fv)

    def dataset_ok(name):
        return name in ("cifar10", "imagenet9", "planted") or (
            name.startswith("folder:") and len(name) > 7)
    validator("dataset", dataset_ok, f"must be one of {data.dataset_names()}", fv)
    validator("planted_features", accepts(planted.check_features), "must be distinct letters "
              "of ABCD where B and D come with A", fv)
    validator("planted_robust_reliability", lambda v: 0 < v <= 1, "must be in (0, 1]", fv)

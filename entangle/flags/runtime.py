"""Output, distribution and performance flags: where the store and results go, strategies,
XLA, threads; and the store binary's maintenance flags."""

from __future__ import annotations

from absl import flags

from entangle import store as store_lib
from entangle.flags._checks import FLAGS, validator
from entangle.runtime import distribution


def define_output_flags(fv=FLAGS):
    flags.DEFINE_string("workdir", None, "Artifact store directory (default ./entangle_work or "
                        "$ENTANGLE_WORKDIR).", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress output.", flag_values=fv)
    flags.DEFINE_enum("on_corrupt", "rebuild", list(store_lib.ON_CORRUPT), "A stored artifact "
                      "that does not match its manifest's checksums: move it aside and rebuild "
                      "it, or move it aside and stop.", flag_values=fv)
    flags.DEFINE_string("results_dir", None, "Where tables and figures go (default "
                        "<workdir>/results/<name>-<dataset>-eps<eps>-<columns>-seed<seed(s)>).",
                        flag_values=fv)


def _gpu_ok(value) -> bool:
    try:
        distribution.parse_gpus(value)
    except ValueError:
        return False
    return True


def define_runtime_flags(fv=FLAGS):
    flags.DEFINE_enum("strategy", "auto", list(distribution.STRATEGIES),
                      "tf.distribute strategy; auto = mirrored on >1 GPU.", flag_values=fv)
    flags.DEFINE_string("gpu", "all", "Which GPUs this process uses: "
                        + distribution.GPU_CHOICES + ". Memory grows as needed.",
                        flag_values=fv)
    validator("gpu", _gpu_ok, "must be " + distribution.GPU_CHOICES, flag_values=fv)
    flags.DEFINE_bool("jit_compile", False, "Compile train and attack steps with XLA.",
                      flag_values=fv)
    flags.DEFINE_bool("tf32", False, "Allow TensorFloat-32 matmuls and convolutions on Ampere "
                      "and newer GPUs (TensorFlow's own default). Off (choice): TF32 rounds "
                      "float32 inputs to 10 mantissa bits, so the float32 stem would see small-"
                      "eps perturbations mostly as rounding; on costs accuracy of the paper's "
                      "small eps, off costs speed only under --precision=float32. No effect on "
                      "CPUs.", flag_values=fv)
    flags.DEFINE_integer("eval_batch_size", 500, "Batch size for evaluation and attacks.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("inter_op_threads", "auto", "TensorFlow inter-op threads: auto (1 "
                        "without a GPU, which makes CPU training bit-reproducible; TF's "
                        "default with GPUs) or a number (0 = TF's default).", flag_values=fv)
    flags.DEFINE_bool("probe_rates", True, "Before building, time a few steps of each kind "
                      "of work never measured on this host, for the plan's ETA (seconds each); "
                      "false: the ETA uses remembered rates, else a guess.", flag_values=fv)


def define_estimate_flags(fv=FLAGS):
    flags.DEFINE_bool("estimate", False, "Print the measured projection of this run's plan "
                      "(probes each kind of work on this hardware: seconds per artifact and "
                      "in total for 1, 2, 4, 8 processes or GPUs on one store) and exit "
                      "without building.", flag_values=fv)
    flags.DEFINE_string("estimate_images", None, "With --estimate: project for TRAIN,TEST "
                        "images of the dataset instead of loading it (a dataset not on this "
                        "machine; cifar10 or imagenet9), e.g. 260000,10150 for ImageNet-9.",
                        flag_values=fv)
    validator("estimate_images", lambda v: v is None or estimate_images(v) is not None,
              "must be TRAIN,TEST: two whole numbers >= 2, e.g. 260000,10150", fv)
    flags.register_multi_flags_validator(
        ["estimate", "estimate_images"], lambda d: d["estimate_images"] is None or d["estimate"],
        message="--estimate_images: only with --estimate (a run uses the dataset's own size)",
        flag_values=fv)


def estimate_images(text: str | None) -> tuple[int, int] | None:
    """--estimate_images as (train, test) image counts; None when unset or malformed."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        return None
    return sizes if len(sizes) == 2 and min(sizes) >= 2 else None


def define_store_flags(fv=FLAGS):
    flags.DEFINE_bool("gc", False, "Remove what no manifest owns and nothing is using: "
                      "temporaries whose owner died, quarantined (damaged) copies, leftovers "
                      "of broken locks.", flag_values=fv)
    flags.DEFINE_bool("verify", False, "Hash every stored artifact against its manifest; "
                      "move each damaged one aside (so the next run rebuilds it) and exit 1 "
                      "if any was.", flag_values=fv)
    flags.DEFINE_bool("gc_partial", False, "With --gc, also remove the resumable state of "
                      "builds that no live process holds (their progress is lost).",
                      flag_values=fv)
    flags.DEFINE_list("export", [], "Model keys to export to --export_dir (all: every stored "
                      "model), each as <key>.entangle-model.zip (the .keras file, its manifest, "
                      "a model card) with its card as JSON and Markdown and SHA256SUMS.",
                      flag_values=fv)
    flags.DEFINE_string("export_dir", None, "Where --export writes.", flag_values=fv)
    flags.DEFINE_list("import_models", [], "Bundles to add to the store under their keys: "
                      "files, folders of them, or http(s) URLs as URL#sha256=<hex>. Every "
                      "checksum is verified first.", flag_values=fv)
    flags.register_multi_flags_validator(
        ["export", "export_dir"], lambda d: bool(d["export"]) == bool(d["export_dir"]),
        message="--export and --export_dir go together: --export=KEY,... (or all) "
                "--export_dir=DIR", flag_values=fv)

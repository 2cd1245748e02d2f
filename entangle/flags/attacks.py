"""Attack and robustification flags: the training attack, the zero-/neg-robust construction,
robustification (Table 4) and the PGD that reports robust accuracy."""

from __future__ import annotations

from absl import flags

from entangle.core import construct, norms
from entangle.flags._checks import eps_validators, FLAGS
from entangle.studies import pipeline


def define_attack_flags(fv=FLAGS):
    flags.DEFINE_integer("train_attack_steps", 16, "PGD steps per adversarial training batch.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("train_attack_step_size", 0.5, "PGD step size in adversarial training.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_bool("train_attack_random_start", False, "Random start for training PGD.",
                      flag_values=fv)
    flags.DEFINE_float("train_attack_start_radius", 1.0, "Radius of the training PGD's "
                       "random start, as a fraction of eps (1: the whole eps ball).",
                       lower_bound=1e-6, upper_bound=1.0, flag_values=fv)
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
    flags.DEFINE_enum("construct_source", "own", list(construct.SOURCES),
                      "The standard model the zero-/neg-robust sets are built on (choice: own, "
                      "trained for the purpose, so that no table model shares its start; "
                      "generator: R_0's generator, whose non-robust features R_0 carries).",
                      flag_values=fv)
    flags.DEFINE_enum("robustify_schedule", "constant", list(norms.STEP_SCHEDULES),
                      "Robustification step lengths: constant (Table 4), or falling linearly "
                      "to step_size / steps.", flag_values=fv)
    flags.DEFINE_bool("robustify_keep_best", False, "Robustification: each image keeps its "
                      "iterate closest to the target representation, not the last.",
                      flag_values=fv)
    flags.DEFINE_enum("seed_pairing", "training_seed", list(pipeline.PAIRINGS),
                      "Who draws each test image's robustification seed x0 (choice: the "
                      "training seed, so that each seed of a table is a new pairing and the "
                      "chance null averages over pairings; data_seed: one pairing for all).",
                      flag_values=fv)
    flags.DEFINE_integer("eval_attack_steps", 20, "PGD steps when reporting robust accuracy.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("eval_step_size_factor", 2.5, "Reporting PGD step = factor*eps/steps.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_integer("eval_strong_steps", 50, "The stronger reporting attack: PGD steps "
                         "per run (same step factor).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("eval_strong_restarts", 5, "The stronger reporting attack: runs, the "
                         "first from x, then random starts, each on the images still right "
                         "(0: not run).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("eval_strong_images", None, "The stronger reporting attack runs on "
                         "the first this many test images (default: all).", lower_bound=1,
                         flag_values=fv)
    eps_validators(fv, {"construct_eps": False, "robustify_eps": True})

"""Experiment flags: the table's rows and columns, transfer, the planted study, different
mistakes."""

from __future__ import annotations

import math

from absl import flags

from entangle.core import models, objectives
from entangle.data import planted
from entangle.flags._checks import (accepts, columns_ok, eps_validators, FLAGS, seed_list_ok,
                                    validator)
from entangle.studies import entanglement, planted_study, transfer


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
    flags.DEFINE_list("seeds", [], "Several training seeds on one store (e.g. 0,1,2): one table "
                      "per seed and their aggregate (mean and sd per cell, seeds held per "
                      "finding); overrides --seed.", flag_values=fv)
    flags.DEFINE_bool("generator_report", True, "Report each R_eps generator's clean and PGD "
                      "accuracy (PGD at its eps; the standard model at every column's eps).",
                      flag_values=fv)
    validator("seeds", seed_list_ok,
              "must be a comma list of distinct whole numbers from 0 to 2**31 - 1", fv)
    validator("columns", columns_ok, "must be paper, extended or a comma list of eps >= 0",
              fv)
    validator("rows", lambda r: bool(r) and set(r) <= set(entanglement.ROWS),
              f"must be a non-empty subset of {', '.join(entanglement.ROWS)}", fv)


def define_transfer_flags(fv=FLAGS):
    flags.DEFINE_string("sources", "paper", "Source models of the transfer attacks, by eps (0: "
                        "the standard model): paper (0,1/16,1/4,1/2,1), extended or a comma "
                        "list.", flag_values=fv)
    flags.DEFINE_enum("attack", "per_source", list(transfer.MODES), "per_source: untargeted "
                      "and targeted PGD on each source alone (Figures 5/6); n_targeted: one "
                      "attack on all --sources at once, each towards its own target (Waseda "
                      "et al. 4.1).", flag_values=fv)
    flags.DEFINE_integer("target_seed", 0, "Seed of the targets (uniform over wrong classes).",
                         lower_bound=0, upper_bound=2 ** 31 - 1, flag_values=fv)
    flags.DEFINE_integer("grid_images", 8, "Images per row of the adversarial-example grids.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("transfer_eps", 2.0, "Transfer attacks: max L2 change.", lower_bound=0.0,
                       flag_values=fv)
    flags.DEFINE_integer("transfer_steps", 100, "Transfer attacks: PGD steps.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_float("transfer_step_size", 0.1, "Transfer attacks: step size.",
                       lower_bound=1e-9, flag_values=fv)
    flags.DEFINE_enum("n_targeted_loss", "ce", list(objectives.N_TARGETED_LOSSES),
                      "N-targeted attack: the sum of cross-entropies (Waseda et al.), or "
                      "clipped margins (each source stops pulling once it says its target "
                      "with margin --margin_kappa): the control for budget allocation.",
                      flag_values=fv)
    flags.DEFINE_float("margin_kappa", 2.0, "The margin (logits) of --n_targeted_loss=margin.",
                       lower_bound=0.0, flag_values=fv)
    eps_validators(fv, {"transfer_eps": False})
    validator("sources", columns_ok, "must be paper, extended or a comma list of eps >= 0",
              fv)


def define_study_flags(fv=FLAGS):
    flags.DEFINE_list("feature_sets", list(planted_study.WORLDS), "Planted study: the worlds, "
                      "each distinct letters of ABCD (A robust shape, B its texture: entangled, "
                      "C artifact, D noise on A's shape: co-located; B and D need A).",
                      flag_values=fv)
    flags.DEFINE_list("study_seeds", ["0", "1"], "Planted study: seeds (each a planted world, "
                      "its data and models).", flag_values=fv)
    flags.DEFINE_integer("probe_size", 1000, "Planted study: images per probe set.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_list("study_construct_eps", ["0.5", "1.5"], "Planted study: the constructed "
                      "sets' L2 budgets (Table 4's 0.5, and one above the non-robust patterns' "
                      "norm, so that the construction can forge them fully).", flag_values=fv)
    flags.DEFINE_float("detector_fpr", 0.05, "Planted study: false-positive rate at which the "
                       "pattern detectors are calibrated.", lower_bound=1e-6, upper_bound=0.49,
                       flag_values=fv)

    validator("feature_sets", lambda v: bool(v) and all(accepts(planted.check_features)(s)
                                                        for s in v),
              "must be a comma list of worlds, each distinct "
              "letters of ABCD where B and D come with A (e.g. ABC,AB,AD,AC,A)", fv)
    validator("study_construct_eps", lambda v: bool(v) and all(
        _positive_float(t) for t in v) and len(set(v)) == len(v),
        "must be a comma list of distinct numbers > 0", fv)
    validator("study_seeds", lambda v: bool(v) and seed_list_ok(v),
              "must be a comma list of distinct whole numbers from 0 to 2**31 - 1", fv)


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
    flags.DEFINE_enum("relabel_init", "own", ["own", "f1"], "Different mistakes: each "
                      "relabelled model starts from initial weights of its own (choice: "
                      "Waseda trains fresh models), or from F1's (f1: the shared start, a "
                      "confound measured in docs/results.md).", flag_values=fv)
    flags.DEFINE_float("leakage_eps", 0.5, "Different mistakes, leakage control (Goh 2019): "
                       "the linear probe reads the representation of the robust model at this "
                       "L2 eps (choice: 0.5, the robust CIFAR-10 model Goh probed; 0: no "
                       "control).", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_float("probe_l2", 1e-3, "Different mistakes, leakage control: L2 penalty "
                       "of the probe's logistic regression on standardised features (choice: "
                       "Goh does not give one).", lower_bound=0.0, flag_values=fv)
    eps_validators(fv, {"mistakes_eps": False, "leakage_eps": False})
    validator("second_model", lambda v: v == "seed" or v in models.VICTIMS,
              f"must be 'seed' or one of {', '.join(models.VICTIMS)}", fv)


def _positive_float(text: str) -> bool:
    try:
        return float(text) > 0 and math.isfinite(float(text))
    except ValueError:
        return False

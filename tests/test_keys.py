"""Store keys hash exactly what determines each artifact: a table of flag changes, each with
the models it must change; what is built from those models (R_eps, transfer's adversarial
sets) must follow, and nothing else may move."""

import dataclasses

import pytest
from absl import flags

from entangle import flags as entangle_flags
from entangle.studies import pipeline, transfer

MODELS = ("standard", "robust", "zero_set", "neg_set", "zero_robust", "neg_robust", "victim",
          "vgg16")
# built from the standard model (eps 0) and from the eps-1 robust model
FROM_STANDARD = {"R0", "adv_u0", "adv_t0", "adv_n"}
FROM_ROBUST = {"R1", "adv_u1", "adv_t1", "adv_n"}
ALL = MODELS + tuple(sorted(FROM_STANDARD | FROM_ROBUST))
VICTIMS = {"victim", "vgg16"}
ADVERSARIAL = {"adv_u0", "adv_t0", "adv_u1", "adv_t1", "adv_n"}
RESNETS = ("standard", "robust", "zero_set", "neg_set", "zero_robust", "neg_robust")
CONSTRUCTED = ("zero_set", "neg_set", "zero_robust", "neg_robust")

# flag change -> the artifacts whose key must change (every other key must stay)
TABLE = [
    ("--train_attack_steps=5", {"robust"}),
    ("--train_attack_step_size=0.3", {"robust"}),
    ("--train_attack_random_start", {"robust"}),
    ("--patience=5", {"zero_robust", "neg_robust"}),
    ("--zero_robust_targets=all", {"zero_set", "zero_robust"}),
    ("--construct_steps=7", set(CONSTRUCTED)),
    ("--construct_eps=0.7", set(CONSTRUCTED)),
    ("--validation_data=clean", set(CONSTRUCTED)),
    ("--validation_fraction=0.25", set(CONSTRUCTED)),
    ("--learning_rate=3e-3,zero_robust:5e-4,neg_robust:1e-3,victim:1e-3", {"zero_robust"}),
    ("--width=8", set(RESNETS)),
    ("--weight_decay=0", set(RESNETS)),
    ("--bn_momentum=0.9", set(RESNETS)),          # victims keep their own momentum
    ("--bn_statistics=moving", set(ALL)),
    ("--victim_weights=imagenet", VICTIMS),
    ("--learning_rate=3e-3,zero_robust:1e-3,neg_robust:1e-3,victim:1e-3,vgg16:5e-4",
     {"vgg16"}),
    ("--epochs=5", set(ALL)),
    ("--seed=1", set(ALL)),
    ("--planted_train_size=600", set(ALL)),
    ("--victim_input_size=48", VICTIMS),
    ("--victim_input_size=0,mobilenet_v2:64", {"victim"}),
    # a change to the standard model alone: its cascade, and nothing of the robust model's
    ("--learning_rate=3e-3,standard:1e-3,zero_robust:1e-3,neg_robust:1e-3,victim:1e-3",
     {"standard", "zero_set", "neg_set", "zero_robust", "neg_robust"}),
    ("--robustify_steps=3", {"R0", "R1"}),
    ("--eval_attack_steps=3", set()),
    ("--eval_batch_size=64", set()),
    ("--transfer_steps=3", ADVERSARIAL),
    ("--target_seed=3", {"adv_t0", "adv_t1", "adv_n"}),   # untargeted sets have no targets
    ("--quiet", set()),
]


def _with_cascade(models: set) -> set:
    """The models a change touches plus what the pipeline builds from them."""
    out = set(models)
    if "standard" in models:
        out |= FROM_STANDARD
    if "robust" in models:
        out |= FROM_ROBUST
    return out


def _keys(*args, workdir):
    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    entangle_flags.parse(["--flagfile=" + entangle_flags.flagfile("smoke.cfg"),
                          f"--workdir={workdir}", "--victims=mobilenet_v2,vgg16",
                          "--sources=0,1", *args], fv)
    cfg = entangle_flags.experiment_config(fv)
    exp = pipeline.Experiment(cfg)
    tr = transfer.Transfer(exp, entangle_flags.transfer_config(fv))
    nt = transfer.Transfer(exp, dataclasses.replace(entangle_flags.transfer_config(fv),
                                                    mode="n_targeted"))
    return {
        "R0": exp.robustified_key(0.0), "R1": exp.robustified_key(1.0),
        "adv_u0": tr.adversarial_key("untargeted", 0.0),
        "adv_t0": tr.adversarial_key("targeted", 0.0),
        "adv_u1": tr.adversarial_key("untargeted", 1.0),
        "adv_t1": tr.adversarial_key("targeted", 1.0),
        "adv_n": nt.adversarial_key("n_targeted"),
        "standard": exp.model_key("standard"),
        "robust": exp.model_key("robust", 1.0),
        "zero_set": exp.constructed_key("zero_robust"),
        "neg_set": exp.constructed_key("neg_robust"),
        "zero_robust": exp.model_key("zero_robust"),
        "neg_robust": exp.model_key("neg_robust"),
        "victim": exp.victim_key("mobilenet_v2"),
        "vgg16": exp.victim_key("vgg16"),
    }


@pytest.fixture(scope="module")
def base_keys(tmp_path_factory):
    return _keys(workdir=tmp_path_factory.mktemp("keys"))


@pytest.mark.parametrize("change,expected", TABLE, ids=[c for c, _ in TABLE])
def test_flag_changes_change_exactly_the_dependent_keys(change, expected, base_keys, tmp_path):
    changed = _keys(change, workdir=tmp_path)
    differs = {k for k in ALL if changed[k] != base_keys[k]}
    assert differs == _with_cascade(expected)


def test_keys_do_not_depend_on_the_working_directory(base_keys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _keys(workdir=tmp_path / "w") == base_keys

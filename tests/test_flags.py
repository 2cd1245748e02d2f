import os
import re

import pytest
from absl import flags

from entangle import flags as entangle_flags
from entangle.flags import hparams
from conftest import ROOT, run_binary, run_python

PAPER = os.path.join(ROOT, "..", "shared", "papers", "springer2021_entanglement.txt")

# Appendix Tables 3 and 4 of Springer et al. (2021), transcribed cell by cell.
TABLE3 = """\
Standard (CIFAR) | ResNet56 (v2) | 200 | 100 | 1e-3 | Yes | Yes | No
Robust (CIFAR) | ResNet56 (v2) | 200 | 100 | 1e-3 | Yes | Yes | No
Zero-robust (CIFAR) | ResNet56 (v2) | 200 | 100* | 1e-4 | Yes | No | No
Neg-robust (CIFAR) | ResNet56 (v2) | 200 | 100* | 1e-4 | Yes | No | No
Victim models (CIFAR) | Misc | 200 | 100 | 1e-4 | Yes | Yes | Yes
Standard (ImageNet) | ResNet20 (v2) | 128 | 100 | 1e-3 | Yes | Yes | No
Robust (ImageNet) | ResNet20 (v2) | 128 | 100 | 1e-3 | Yes | Yes | No
Zero-Robust (ImageNet) | ResNet20 (v2) | 128 | 100* | 1e-3 | Yes | No | No
Neg-robust (ImageNet) | ResNet20 (v2) | 128 | 100* | 1e-3 | Yes | No | No
Victim models (ImageNet) | Misc | 128 | 100 | 1e-4 | Yes | Yes | Yes"""
TABLE4 = """\
Robustified (CIFAR) | ∞ | 400 | 0.05
Zero-robust (CIFAR) | 0.5 | 200 | 0.1
Neg-robust (CIFAR) | 0.5 | 200 | 0.1
Untargeted Adversarial Examples (CIFAR) | 2.0 | 100 | 0.1
Targeted Adversarial Examples (CIFAR) | 2.0 | 100 | 0.1
Robustified (ImageNet) | ∞ | 200 | 0.1
Zero-robust (ImageNet) | 0.5 | 200 | 0.1
Neg-robust (ImageNet) | 0.5 | 200 | 0.1
Untargeted Adversarial Examples (ImageNet) | 4.0 | 100 | 0.1
Targeted Adversarial Examples (ImageNet) | 4.0 | 100 | 0.1"""


def _cell(c):
    c = c.strip()
    try:
        return float(c.rstrip("*")), c.endswith("*")
    except ValueError:
        return c.lower()


def _rows(text):
    return [[_cell(c) for c in line.strip().strip("|").split("|")] for line in text.splitlines()]


def _paper_table(caption):
    with open(PAPER) as f:
        text = f.read()
    block = text[text.index(caption):]
    lines = [l for l in block.splitlines() if l.startswith("|")]
    rows = []
    for l in lines[2:]:
        if "---" in l or l.count("|") < 4:
            continue
        rows.append(l)
        if len(rows) == 10:
            break
    return "\n".join(rows)


def test_table3_matches_paper_cell_by_cell():
    ours = [[_cell(c) for c in r] for r in hparams.table3_rows()]
    assert ours == _rows(TABLE3)


def test_table4_matches_paper_cell_by_cell():
    ours = [[_cell(c) for c in r] for r in hparams.table4_rows()]
    assert ours == _rows(TABLE4)


@pytest.mark.skipif(not os.path.exists(PAPER), reason="../shared/papers is absent")
def test_transcription_matches_paper_text():
    assert _rows(_paper_table("Table 3. Model parameters")) == _rows(TABLE3)
    assert _rows(_paper_table("Table 4. Parameters")) == _rows(TABLE4)


def test_per_kind_values():
    text = "1e-3,zero_robust:1e-4,victim:1e-4"
    assert entangle_flags.per_kind(text, "standard", float) == 1e-3
    assert entangle_flags.per_kind(text, "zero_robust", float) == 1e-4
    with pytest.raises(ValueError, match="unknown model kind"):
        entangle_flags.per_kind("1,bogus:2", "standard", int)
    with pytest.raises(ValueError, match="no value"):
        entangle_flags.per_kind("victim:2", "standard", int)
    assert entangle_flags.kinds_on("standard,robust", "robust")
    assert not entangle_flags.kinds_on("none", "robust")
    assert entangle_flags.kinds_on("all", "victim")
    # a victim name is a kind of its own that falls back to "victim", then the default
    text = "100,victim:6,xception:2"
    assert entangle_flags.per_kind(text, "xception", int) == 2
    assert entangle_flags.per_kind(text, "vgg16", int) == 6
    assert entangle_flags.per_kind("100", "vgg16", int) == 100


def test_per_victim_overrides_and_victim_weights(monkeypatch):
    monkeypatch.chdir(ROOT)
    from entangle.studies import pipeline

    fv = _parse("--epochs=3,victim:4,xception:2", "--victims=vgg16,xception",
                "--victim_weights=imagenet")
    cfg = entangle_flags.experiment_config(fv)
    exp = pipeline.Experiment(cfg)
    assert exp.victim_config("xception").epochs == 2
    assert exp.victim_config("vgg16").epochs == 4
    assert exp.victim_config("densenet121").epochs == 4   # not listed: the victims' value
    assert exp.victim_config("vgg16").arch == "vgg16"
    assert exp.victim_config("vgg16").pretrained and not cfg.hparams["standard"].pretrained
    assert not entangle_flags.experiment_config(_parse("--victim_weights=none")).hparams[
        "victim"].pretrained
    with pytest.raises(ValueError, match="victim must be one of"):
        exp.victim_config("alexnet")


def _parse(*args):
    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    entangle_flags.parse([f"--flagfile={entangle_flags.flagfile('smoke.cfg')}", *args], fv)
    return fv


@pytest.mark.parametrize("arg,match", [
    ("--eps=-1", "--eps"),
    ("--dataset=mnist", "--dataset"),
    ("--kind=fancy", "kind"),
    ("--batch_size=0", "--batch_size"),
    ("--learning_rate=1e-3,bogus:1", "--learning_rate"),
    ("--arch=resnet21v2", "--arch"),
    ("--augment=standard,sideways", "--augment"),
    ("--victims=alexnet", "--victims"),
    ("--victim_weights=coco", "--victim_weights"),
    ("--sources=0,-1", "--sources"),
    ("--attack=both", "--attack"),
    ("--planted_features=XYZ", "--planted_features"),
    ("--planted_robust_reliability=1.5", "--planted_robust_reliability"),
    ("--eps=nan", "--eps"),
    ("--eps=inf", "--eps"),
    ("--construct_eps=nan", "--construct_eps"),
    ("--construct_eps=inf", "--construct_eps"),
    ("--transfer_eps=nan", "--transfer_eps"),
    ("--mistakes_eps=-1", "--mistakes_eps"),
    ("--leakage_eps=nan", "--leakage_eps"),
    ("--probe_l2=-1", "--probe_l2"),
    ("--victim_input_size=0,mobilenet_v2:-3", "--victim_input_size"),
    ("--victim_input_size=0,alexnet:64", "--victim_input_size"),
    ("--download=maybe", "--download"),
    ("--attack_eps=nan", "--attack_eps"),
    ("--robustify_eps=nan", "--robustify_eps"),
    ("--seeds=0,0", "--seeds"),
    ("--seeds=0,x", "--seeds"),
    ("--seeds=-1", "--seeds"),
    ("--seeds=0,00", "--seeds"),
    ("--seed=-1", "--seed"),
    ("--data_seed=-1", "--data_seed"),
    ("--study_seeds=-1", "--study_seeds"),
])
def test_bad_flags_are_rejected(arg, match, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(flags.Error, match=match):
        _parse(arg)


def test_table_eps_zero_is_rejected_not_replaced(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="--eps .* finite number > 0; got 0"):
        entangle_flags.table_config(_parse("--eps=0"))
    assert entangle_flags.table_config(_parse()).eps == 0.5          # not given: the paper's
    assert entangle_flags.table_config(_parse("--eps=0.25")).eps == 0.25
    assert entangle_flags.table_config(_parse("--robustify_eps=inf")).eps == 0.5


@pytest.mark.parametrize("arg, match", [
    ("--batch_size=100000", r"--batch_size\) 100000 of standard exceeds the \d+ images"),
    ("--eps=1e9", r"--eps\) 1e\+09 exceeds the L2 diameter of 16x16x3 images .* \(27.7\)"),
    ("--columns=0,30", r"--columns\) 30 exceeds the L2 diameter"),
    ("--construct_eps=28", r"--construct_eps\) 28 exceeds the L2 diameter"),
])
def test_what_the_data_rules_out_is_refused_before_any_work(tmp_path, arg, match):
    """Checked against the loaded data before any probe, trace or training: the binary
    stops (a usage error) naming the flag, with nothing probed, built or stored, in bounded memory."""
    import resource

    proc = run_binary("table1", "--flagfile=flags/smoke.cfg", f"--workdir={tmp_path}", arg,
                      timeout=300)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-2000:]
    assert re.search(match, out), out[-2000:]
    assert "probing" not in out and not os.path.exists(tmp_path / "models")
    assert peak_gib < 2, peak_gib


def test_smoke_flagfile_builds_typed_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = entangle_flags.experiment_config(_parse())
    assert cfg.data.dataset == "planted" and cfg.data.planted.image_size == 16
    assert cfg.hparams["zero_robust"].early_stopping and not cfg.hparams["zero_robust"].augment
    assert cfg.hparams["standard"].augment and not cfg.hparams["standard"].early_stopping
    assert cfg.hparams["robust"].attack_steps == 3


def _run_cli(*args):
    return run_binary("train", *args, timeout=300)


def test_cli_bad_flag_exits_cleanly():
    proc = _run_cli("--flagfile=flags/smoke.cfg", "--eps=-0.5", "--kind=robust")
    assert proc.returncode != 0
    assert "--eps" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_robust_needs_positive_eps(tmp_path):
    proc = _run_cli("--flagfile=flags/smoke.cfg", "--kind=robust", "--eps=0",
                    f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert "eps must be > 0" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def _binary_flags(monkeypatch, name="table1", groups=("data", "model", "training", "attacks",
                                                      "table", "output", "runtime")):
    """A fresh FlagValues with every flag, and the binary's declared groups."""
    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    monkeypatch.setitem(entangle_flags._USES, "name", name)
    monkeypatch.setitem(entangle_flags._USES, "groups", groups)
    monkeypatch.setitem(entangle_flags._USES, "also", ())
    return fv


def test_help_lists_the_binarys_groups_with_effective_values_and_exits_0(monkeypatch, capsys):
    fv = _binary_flags(monkeypatch)
    quick = entangle_flags.flagfile("cifar10_quick.cfg")
    with pytest.raises(SystemExit) as done:
        entangle_flags.parse_flags(["table1", f"--flagfile={quick}", "--help"], fv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "values as set by cifar10_quick.cfg" in out
    for group in ("Data:", "Model:", "Training (Table 3, per model kind):",
                  "Attacks and robustification (Table 4):", "Table and figures:"):
        assert group in out
    assert "  --batch_size=64\n" in out and "  --robustify_steps=40\n" in out  # the quick values
    assert "--victims=" not in out and "Transfer:" not in out   # not table1's
    assert "  --eps=0.0  (in effect: 0.5, the paper's CIFAR-10 robust row)\n" in out
    assert "--planted_" not in out and "listed with --dataset=planted" in out
    with pytest.raises(SystemExit):
        entangle_flags.parse_flags(["table1", f"--flagfile={quick}", "--eps=0.25", "--help"],
                                   _binary_flags(monkeypatch))
    assert "  --eps=0.25\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        entangle_flags.parse_flags(["table1", "--dataset=planted", "--help"],
                                   _binary_flags(monkeypatch))
    assert "  --planted_robust_norm=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        entangle_flags.parse_flags(["table1", "--helpfull"], _binary_flags(monkeypatch))
    assert done.value.code == 0 and "Transfer:" in capsys.readouterr().out


def test_a_flag_the_binary_does_not_use_is_rejected(monkeypatch, capsys):
    fv = _binary_flags(monkeypatch)
    with pytest.raises(SystemExit) as done:
        entangle_flags.parse_flags(["table1", "--victims=xception"], fv)
    assert done.value.code == 1
    assert "--victims is not used by table1" in capsys.readouterr().err
    fv = _binary_flags(monkeypatch)   # the shared flagfiles set every group's flags: fine
    entangle_flags.parse_flags(["table1", f"--flagfile={entangle_flags.flagfile('smoke.cfg')}"],
                               fv)
    assert fv.victims == ["mobilenet_v2"]


def test_an_unknown_flag_in_a_flagfile_names_the_file_and_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("# a comment\n--flagfile=smoke.cfg\n--epochz=3\n")
    with pytest.raises(SystemExit) as done:
        entangle_flags.parse_flags(["table1", f"--flagfile={bad}"], _binary_flags(monkeypatch))
    assert done.value.code == 1
    assert f"unknown flag --epochz in {bad} line 3" in capsys.readouterr().err


def test_a_binary_answers_help_through_the_entangle_command_with_exit_0():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = run_python("-m", "entangle", "transfer", "--help", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Transfer") and "Victims (transfer, different mistakes):" \
        in proc.stdout and "--transfer_eps=2.0" in proc.stdout
    assert "Table and figures:" not in proc.stdout

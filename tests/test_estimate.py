"""Measured projections: the schedule over N processes, per-artifact arithmetic, probes that
run once per kind of work and are remembered in the store, and real probes on a tiny model."""

import dataclasses
import math
import os

import pytest

from entangle import store as store_lib
from entangle.core import train
from entangle.store import estimate, plan

CFG = train.TrainConfig(arch="resnet11v2", width=4, batch_size=8, epochs=1, pooling="global")


def _item(key, seconds, deps=(), present=False):
    op = plan.Op("train", CFG, 8, (16, 16, 3), 4)
    return plan.PlanItem(key, "models", key, deps, lambda: None, seconds, present=present,
                         work=((op, seconds),))


def test_schedule_respects_dependencies_and_processes():
    items = [_item("a", 10), _item("b", 10, ("a",)), _item("c", 10), _item("d", 5, ("b", "c"))]
    seconds = {it.key: float(it.passes) for it in items}
    assert estimate.schedule(items, seconds, 1) == 35
    assert estimate.schedule(items, seconds, 2) == 25       # a | c, then b, then d
    assert estimate.schedule(items, seconds, 8) == 25       # the chain a -> b -> d bounds it
    items[0].present = True
    assert estimate.schedule(items, {**seconds, "a": 0.0}, 2) == 15
    with pytest.raises(ValueError, match="depends on an artifact the plan lacks"):
        estimate.schedule([_item("x", 1, ("missing",))], {"x": 1.0}, 2)


def test_items_count_images_at_each_ops_rate_and_each_trace_once():
    robust = dataclasses.replace(CFG, eps=0.5, attack_steps=3)
    work = plan.training_work(robust, 100, (16, 16, 3), 4)
    assert [(op.kind, images) for op, images in work] == [("adv_train", 100)]  # timed whole
    assert "adv_train k3 " in work[0][0].signature()    # its PGD steps set its speed
    assert plan.training_work(CFG, 100, (16, 16, 3), 4)[0][0].kind == "train"
    attack = plan.attack_work((CFG, robust), 50, 8, (16, 16, 3), 4)
    robustify = plan.attack_work((CFG,), 50, 8, (16, 16, 3), 4, kind="robustify")
    rates = {work[0][0].signature(): estimate.OpRate(0.01, 2.0),
             attack[0][0].signature(): estimate.OpRate(0.002, 1.0),
             robustify[0][0].signature(): estimate.OpRate(0.003, 0.5)}
    it = plan.training_item("robust", "k", (), lambda: None, robust, 100, (16, 16, 3), 4)
    assert it.passes == 100 * (2 + 3)
    assert estimate.item_seconds(it, rates) == pytest.approx(100 * 0.01 + 2.0)
    two = plan.PlanItem("set", "datasets", "s", (), lambda: None, 0, work=attack[:1] * 2)
    assert estimate.item_seconds(two, rates) == pytest.approx(2 * 50 * 0.002 + 1.0)  # one trace
    with pytest.raises(ValueError, match="op kind must be one of"):
        plan.Op("evaluate", CFG, 8, (16, 16, 3), 4)


def test_estimate_images_projects_a_dataset_not_on_this_machine(tmp_path, own_cache):
    """ImageNet-9 is not here: the plan is made for the sizes given, every op of it probed
    (here faked at 1 ms per image), each artifact at its size x its steps."""
    from conftest import smoke_flags

    from entangle import flags as entangle_flags
    from entangle.studies import projections

    fv = smoke_flags("--dataset=imagenet9", "--estimate", "--estimate_images=1000,200",
                     f"--workdir={tmp_path}")
    assert entangle_flags.estimate_images(fv.estimate_images) == (1000, 200)
    exp_cfg = entangle_flags.experiment_config(fv)
    kinds = []

    def fake_probe(op):
        kinds.append(op.kind)
        assert op.input_shape == (64, 64, 3) and op.num_classes == 9
        return estimate.OpRate(0.001, 0.0)

    est = projections.project(exp_cfg, "table", entangle_flags.table_config(fv),
                              probe_fn=fake_probe, images=(1000, 200), log=lambda m: None)
    assert sorted(set(kinds)) == ["adv_train", "attack", "robustify", "train"]
    seconds = {label: sec for label, _, sec, _ in est.items}
    epochs, steps = exp_cfg.hparams["standard"].epochs, exp_cfg.robustify.steps
    assert seconds["standard"] == pytest.approx(epochs * 1000 * 0.001)
    assert seconds["R_0"] == pytest.approx(200 * (steps + 3) * 0.001)
    with pytest.raises(ValueError, match="shapes without data: cifar10, imagenet9"):
        projections.project(entangle_flags.experiment_config(
                                smoke_flags(f"--workdir={tmp_path}")), "table",
                            entangle_flags.table_config(fv), probe_fn=fake_probe,
                            images=(1000, 200), log=lambda m: None)


@pytest.mark.parametrize("args,message", [
    (["--estimate", "--estimate_images=abc"], "--estimate_images: must be TRAIN,TEST"),
    (["--estimate", "--estimate_images=100,1"], "--estimate_images: must be TRAIN,TEST"),
    (["--estimate_images=100,100"], "--estimate_images: only with --estimate")])
def test_bad_estimate_images_fail_naming_the_flag(args, message):
    from absl import flags
    from conftest import smoke_flags

    with pytest.raises(flags.IllegalFlagValueError, match=message):
        smoke_flags(*args)


def test_probes_run_once_per_op_are_remembered_and_seed_the_plans_eta(tmp_path, own_cache):
    s = store_lib.Store(str(tmp_path))
    items = [_item("a", 100), _item("b", 50, ("a",))]
    calls = []

    def fake_probe(op):
        calls.append(op.signature())
        return estimate.OpRate(0.1, 3.0)

    assert estimate.estimate(s, items, probe=False) is None        # never measured here
    first = estimate.estimate(s, items, probe_fn=fake_probe, log=lambda m: None)
    assert len(calls) == 1                                          # one op, probed once
    assert [sec for _, _, sec, _ in first.items] == pytest.approx([13.0, 8.0])
    assert first.wall[1] == first.wall[8] == pytest.approx(21.0)   # a chain: no speed-up
    again = estimate.estimate(s, items, probe=False)               # remembered in the store
    assert again.wall == first.wall and len(calls) == 1
    assert "measured here" in next(iter(again.rates.values())).source
    rate = plan.Rate(100.0, 0.0, "op rates", {k: sec for _, k, sec, _ in again.items})
    assert "build, ~13s" in plan.describe(s, items, rate)
    refined = rate.refined(items[0], 26.0, plan.Rate(100.0))        # took twice the projection
    assert refined.seconds(items[1]) == pytest.approx(8.0 * 1.5)    # halfway to that


def test_a_new_store_on_this_machine_estimates_from_the_users_record(tmp_path, own_cache):
    items = [_item("a", 100)]
    first = store_lib.Store(str(tmp_path / "one"))
    estimate.estimate(first, items, probe_fn=lambda op: estimate.OpRate(0.1, 3.0),
                      log=lambda m: None)
    assert os.path.exists(own_cache / estimate.RATES)
    fresh = store_lib.Store(str(tmp_path / "two"))
    again = estimate.estimate(fresh, items, probe=False)        # no probe: this machine knows
    assert again is not None and again.items[0][2] == pytest.approx(13.0)
    # the store's own measurement wins over the machine's
    sig = items[0].work[0][0].signature()
    estimate.remember(fresh, {sig: estimate.OpRate(0.2, 1.0)})
    other = store_lib.Store(str(tmp_path / "three"))
    estimate.remember(other, {sig: estimate.OpRate(0.5, 0.0)})   # the machine record moves on
    assert estimate.known_rates(fresh, [items[0].work[0][0]])[sig].seconds_per_image == 0.2
    (own_cache / estimate.RATES).write_text("[not a record")     # a damaged record: ignored
    assert estimate.known_rates(fresh, [items[0].work[0][0]])[sig].seconds_per_image == 0.2
    assert estimate.known_rates(store_lib.Store(str(tmp_path / "four")),
                                [items[0].work[0][0]]) == {}


def test_real_probes_give_positive_finite_rates():
    robust = dataclasses.replace(CFG, eps=0.5, attack_steps=4)
    rates = {kind: estimate.probe_op(plan.Op(kind, robust, 8, (16, 16, 3), 4), repeats=2)
             for kind in plan.Op.KINDS}
    for r in rates.values():
        assert 0 < r.seconds_per_image < 1 and math.isfinite(r.overhead) and r.overhead > 0
    # four PGD steps inside: the adversarial step is slower than the clean one
    assert rates["adv_train"].seconds_per_image > rates["train"].seconds_per_image
    with pytest.raises(ValueError, match="needs eps > 0"):
        train.probe_throughput(CFG, (16, 16, 3), 4, adversarial=True)


@pytest.mark.parametrize("binary,artifact", [("transfer", "untargeted set eps 1"),
                                             ("different_mistakes", "N-targeted set")])
def test_transfer_and_mistakes_binaries_estimate_without_building(binary, artifact, tmp_path):
    from conftest import run_binary

    proc = run_binary(binary, "--flagfile=flags/smoke.cfg", f"--workdir={tmp_path}",
                      "--estimate", check=True)
    assert "## Projected time" in proc.stdout and f"| {artifact} |" in proc.stdout
    assert "| 8 |" in proc.stdout and not (tmp_path / "models").exists()


def test_auto_precision_follows_the_cpu_and_is_logged(tmp_path, monkeypatch):
    from conftest import run_binary

    from entangle.runtime import hardware

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert hardware.choose_precision("auto", {"amx_bf16"}, 0)[0] == "float32"   # oneDNN off
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert hardware.choose_precision("auto", {"amx_bf16", "avx512f"}, 0)[0] == "mixed_bfloat16"
    assert hardware.choose_precision("auto", {"avx512_bf16"}, 0)[0] == "mixed_bfloat16"
    assert hardware.choose_precision("auto", {"avx2", "avx512f"}, 0)[0] == "float32"
    assert hardware.choose_precision("auto", {"amx_bf16"}, 1)[0] == "float32"    # a GPU
    assert hardware.choose_precision("float32", {"amx_bf16"}, 0) == ("float32", "as given")
    chosen, why = hardware.choose_precision("auto")
    proc = run_binary("table1", "--flagfile=flags/smoke.cfg", "--precision=auto", "--estimate",
                      f"--workdir={tmp_path}", check=True)
    assert f"precision: {chosen} ({why})" in proc.stdout
    assert f" {chosen} |" in proc.stdout            # the probes ran at the chosen precision

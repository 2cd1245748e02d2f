"""Each concept declared once: the artifact graph every plan comes from, and one Experiment
per run, which loads its data once and hashes each artifact once per process."""

import collections
import os
import tempfile

import pytest
from conftest import smoke_flags

from entangle import data, store as store_lib
from entangle.flags import configs
from entangle.store.plan import PlanItem
from entangle.studies import entanglement, graph, mistakes, pipeline, transfer

FEW = ("--rows=standard,robust", "--columns=0,1/2", "--epochs=1", "--robustify_steps=4",
       "--eval_strong_restarts=0", "--generator_report=false", "--quiet")


def _experiment(*args):
    fv = smoke_flags(f"--workdir={tempfile.mkdtemp(prefix='entangle-test-')}", *args)
    return fv, pipeline.Experiment(configs.experiment_config(fv))


def test_every_plan_comes_from_the_one_artifact_graph(monkeypatch):
    """A new dependency declared in the graph (here: every classifier needs a 'calibration'
    artifact) appears in the Table, Transfer and Mistakes plans, none of which names it."""
    real = graph.Graph.model

    def model(self, kind, eps=0.0, role="generator"):
        key = real(self, kind, eps, role)
        extra = self.add(PlanItem(f"calibration of {key}", "datasets", f"cal-{key}", (),
                                  lambda: None, 1.0))
        self.items[key] = PlanItem(**{**self.items[key].__dict__,
                                      "deps": self.items[key].deps + (extra,)})
        return key

    monkeypatch.setattr(graph.Graph, "model", model)
    fv, exp = _experiment("--victims=mobilenet_v2")
    studies = {"table": entanglement.Table(exp, configs.table_config(fv)),
               "transfer": transfer.Transfer(exp, configs.transfer_config(fv)),
               "mistakes": mistakes.Mistakes(exp, configs.mistakes_config(fv))}
    plans = {name: list(study.graph().items.values()) for name, study in studies.items()}
    for name, items in plans.items():
        # the graph's classifiers (victims and the relabelled models of the mistakes study
        # are the studies' own items)
        models = [it for it in items if it.kind == "models" and not it.label.startswith(
            ("victim", "model on (X'"))]
        assert models, name
        keys = {it.key for it in items}
        for it in models:
            assert f"cal-{it.key}" in keys and f"cal-{it.key}" in it.deps, (name, it.label)


def test_the_zero_robust_set_with_every_target_has_one_example_per_class():
    fv, exp = _experiment("--zero_robust_targets=all", "--planted_num_classes=5")
    g = graph.Graph(exp)
    g.model("zero_robust", 0.0, "row")
    n = len(exp.splits().train)
    sets = [it for it in g.items.values() if it.label == "zero_robust set"]
    assert sets[0].passes == n * 5 * (exp.cfg.construct.steps + 1)   # 5 classes, not 10


def test_one_experiment_per_run_loads_the_data_once_and_hashes_each_artifact_once(
        tmp_path, monkeypatch):
    loads, hashed = [], collections.Counter()
    real_load, real_digests = data.load_dataset, store_lib.file_digests
    monkeypatch.setattr(data, "load_dataset",
                        lambda *a, **k: loads.append(a[:2]) or real_load(*a, **k))
    monkeypatch.setattr(store_lib, "file_digests",
                        lambda d: hashed.update([os.path.basename(d)]) or real_digests(d))
    fv = smoke_flags(f"--workdir={tmp_path}", *FEW)
    exp_cfg, cfg = configs.experiment_config(fv), configs.table_config(fv)
    first = entanglement.run_seeds(exp_cfg, cfg, [0, 1], log=lambda m: None)
    assert sorted(loads) == [("planted", "test"), ("planted", "train")]   # once, two seeds
    assert first.built and not [d for d, n in hashed.items() if n > 1]
    hashed.clear()
    again = entanglement.run_seeds(exp_cfg, cfg, [0, 1], log=lambda m: None)
    assert again.built == [] and sum(hashed.values()) == 0   # verified once in this process
    assert again.tables[1].cells == first.tables[1].cells
    other = store_lib.Store(str(tmp_path))                   # another Store on the same root
    key = first.tables[0].models["standard"]
    assert other.verify("models", key) == [] and sum(hashed.values()) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_with_config_shares_the_loaded_data_and_the_store(seed):
    fv, exp = _experiment()
    other = exp.with_config(entanglement.with_seed(exp.cfg, seed))
    assert other.store is exp.store and other.splits() is exp.splits()
    assert other.train_data_key() == exp.train_data_key()

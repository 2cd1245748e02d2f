"""Every model of a table is its own: no two share initial weights, batch order or seed
pairings (the paper: "All classifiers are trained starting with random initial weights")."""

import itertools
import tempfile

import numpy as np
import pytest
from conftest import smoke_flags

from entangle.core import seeding, train, train_config
from entangle.data import batching
from entangle.flags import configs
from entangle.store import training
from entangle.studies import entanglement, pipeline


def _table(*args):
    fv = smoke_flags(f"--workdir={tempfile.mkdtemp(prefix='entangle-test-')}", *args)
    return entanglement.Table(pipeline.Experiment(configs.experiment_config(fv)),
                              configs.table_config(fv))


def _trained_models(table):
    """(label, TrainConfig) of every classifier the table trains, from its plan."""
    return [(it.label, it.work[0][0].config) for it in table.items(robustified=False)
            if it.kind == training.MODEL_KIND]


def _kernel_cosine(a, b) -> float:
    """Mean cosine between same-position convolution kernels of two models."""
    pairs = [(u, v) for u, v in zip(a.get_weights(), b.get_weights()) if u.ndim == 4]
    return float(np.mean([np.dot(u.ravel(), v.ravel()) /
                          (np.linalg.norm(u) * np.linalg.norm(v)) for u, v in pairs]))


def shared_starts(table) -> list:
    """Pairs of the table's classifiers that start from the same weights (kernel cosine
    > 0.5) or see the same first batch."""
    sp = table.exp.splits()
    built = {}
    for label, cfg in _trained_models(table):
        with seeding.seeded(cfg.seed):
            built[label] = (train.build_model(cfg, sp.train.image_shape, sp.train.num_classes),
                            batching.EpochPipeline(sp.train.x, sp.train.y, cfg.batch_size,
                                                   shuffle=True, seed=cfg.seed))
    out = []
    for (la, (ma, pa)), (lb, (mb, pb)) in itertools.combinations(built.items(), 2):
        same_arch = [w.shape for w in ma.get_weights()] == [w.shape for w in mb.get_weights()]
        first_a = next(iter(pa.epoch(0)))[1].numpy()
        first_b = next(iter(pb.epoch(0)))[1].numpy()
        if (same_arch and _kernel_cosine(ma, mb) > 0.5) or np.array_equal(first_a, first_b):
            out.append((la, lb))
    return out


def test_no_two_models_of_a_table_share_initial_weights_or_batches():
    table = _table()
    labels = [label for label, _ in _trained_models(table)]
    # the generators of five columns, the standard row's twin, the constructed sets' source,
    # the zero- and neg-robust models
    assert len(labels) == 9 and len(set(labels)) == 9
    assert shared_starts(table) == []


def test_the_check_fails_when_models_share_one_seed(monkeypatch):
    monkeypatch.setattr(train_config, "role_seed", lambda seed, *rest: seed)
    table = _table()
    # the three standard roles collapse into one model; every pair of the rest shares a start
    n = len(_trained_models(table))
    assert n == 7 and len(shared_starts(table)) == n * (n - 1) // 2


def test_the_constructed_sets_source_follows_its_flag():
    own, gen = _table(), _table("--construct_source=generator")
    source = {t: t.exp.constructed_key("zero_robust") for t in (own, gen)}
    assert source[own] != source[gen]
    labels = [label for label, _ in _trained_models(gen)]
    assert "standard (source)" not in labels and len(labels) == 8   # R_0's generator serves
    assert shared_starts(gen) == []
    manifest_source = gen.exp.model_key("standard")
    assert manifest_source in {d for it in gen.items() if it.label == "zero_robust set"
                               for d in it.deps}


def test_role_seeds_are_stable_and_differ_across_roles_kinds_eps_and_seeds():
    seeds = {(s, k, e, r): train_config.role_seed(s, k, e, r)
             for s in (0, 1, 2) for k in ("standard", "robust") for e in (0.0, 0.25, 0.5)
             for r in ("generator", "row", "source")}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2 ** 31 for v in seeds.values())
    # a hash of its inputs, the same in every process and on every machine
    assert train_config.role_seed(0, "standard", 0.0, "generator") == \
        train_config.role_seed(0, "standard", 0, "generator") == 18177509
    assert train_config.role_seed(1, "standard", 0.0, "generator") != \
        train_config.role_seed(0, "standard", 0.0, "row")


def test_tables_of_different_seeds_share_no_model():
    keys = [{it.key for it in _table(f"--seed={s}").items(robustified=True)} for s in (0, 1)]
    assert not keys[0] & keys[1]


@pytest.mark.parametrize("pairing", ["training_seed", "data_seed"])
def test_the_seed_pairing_follows_its_flag(pairing):
    seeds = {s: _table(f"--seed={s}", f"--seed_pairing={pairing}").exp.seed_images()
             for s in (0, 1)}
    n = len(seeds[0])
    assert all(np.all(v != np.arange(n)) and sorted(v) == list(range(n))
               for v in seeds.values())           # derangements of the test set
    assert np.array_equal(seeds[0], seeds[1]) == (pairing == "data_seed")
    again = _table("--seed=0", f"--seed_pairing={pairing}").exp.seed_images()
    assert np.array_equal(again, seeds[0])

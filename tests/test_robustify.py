"""Representation inversion (robustified datasets)."""

import numpy as np
import pytest

from entangle import robustify


def test_seed_indices_are_a_seeded_derangement():
    for n in (2, 3, 10, 1000):
        s = robustify.seed_indices(n, seed=5)
        assert sorted(s) == list(range(n)) and not np.any(s == np.arange(n))
    np.testing.assert_array_equal(robustify.seed_indices(50, 1), robustify.seed_indices(50, 1))
    assert not np.array_equal(robustify.seed_indices(50, 1), robustify.seed_indices(50, 2))
    with pytest.raises(ValueError, match="2 images"):
        robustify.seed_indices(1)


def test_robustification_matches_the_representation_and_leaves_its_seed(trained_tiny):
    model, x, _ = trained_tiny
    cfg = robustify.RobustifyConfig(steps=80, step_size=0.1)
    r = robustify.robustify_split(model, x[:32], cfg, batch_size=16, verbose=False)
    assert r.x.shape == x[:32].shape and 0 <= r.x.min() and r.x.max() <= 1
    assert np.median(r.relative_distance) < 0.25  # a small fraction of the start distance
    moved = np.linalg.norm((r.x - x[:32][r.seeds]).reshape(32, -1), axis=1)
    assert np.median(moved) > 1.0  # no norm bound: it travels far from the seed x0
    with pytest.raises(ValueError, match="step_size"):
        robustify.RobustifyConfig(step_size=0)


def test_planted_ground_truth_robust_generators_carry_the_robust_pattern(tmp_path):
    """On planted data (A robust, norm 6; B/C non-robust, norm 1), robustifying w.r.t. a
    standard model keeps the seed's robust pattern A (it matches the representation through
    non-robust directions), while an eps-2 robust model's R carries the target's A."""
    from entangle import data, train
    from entangle.store import Store

    cfg = data.PlantedConfig(image_size=16, num_classes=4, train_size=1024, test_size=128)
    tr, te = data.make_planted("train", cfg), data.make_planted("test", cfg)
    patterns = data.planted_patterns(cfg)["A"].reshape(4, -1)

    def a_class(x):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        return np.argmax((x - x.mean(1, keepdims=True)) @ patterns.T, 1)

    out = {}
    for eps in (0.0, 2.0):
        tc = train.TrainConfig(arch="resnet11v2", width=8, batch_size=32, epochs=5,
                               learning_rate=3e-3, lr_decay="none", augment=False, eps=eps,
                               attack_steps=4, attack_step_size=0.75)
        model = train.train_classifier(tc, tr, None, Store(str(tmp_path)),
                                       runtime=train.RuntimeOptions(verbose=False)).model
        r = robustify.robustify_split(model, te.x, robustify.RobustifyConfig(
            steps=60, step_size=0.25), verbose=False)
        assert np.median(r.relative_distance) < 0.2
        out[eps] = (np.mean(a_class(r.x) == te.y), np.mean(a_class(r.x) == te.y[r.seeds]))
    target_std, seed_std = out[0.0]
    target_rob, _ = out[2.0]
    assert seed_std > 0.8  # R_0 keeps its seed's robust pattern
    assert target_rob > target_std + 0.1, out  # R_2 carries the target's robust pattern

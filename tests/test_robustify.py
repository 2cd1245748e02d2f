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

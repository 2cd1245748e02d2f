"""Stand-ins: models of one architecture share one set of traces, and every output is still
the model's own, bit for bit."""

import gc
import random
import weakref

import keras
import numpy as np

from entangle.core import attacks, inference, models, robustify, seeding, stand_ins


def _pair():
    """Two ResNet11v2s of one architecture from different seeds."""
    out = []
    for seed in (1, 2):
        with seeding.seeded(seed):
            out.append(models.resnet_v2(11, (16, 16, 3), 3, width=4))
    return out


def _outputs(model, x, y):
    adv = attacks.pgd_l2(model, x, y, eps=0.5, steps=3, step_size=0.2, batch_size=8,
                         verbose=False)
    rob = robustify.robustify(model, x, x[::-1].copy(), robustify.RobustifyConfig(steps=2),
                              batch_size=8, verbose=False).x
    return inference.predict_logits(model, x, batch_size=8), adv, rob


def test_models_of_one_architecture_share_traces_and_keep_their_own_outputs():
    rng = np.random.default_rng(0)
    x = rng.random((11, 16, 16, 3)).astype(np.float32)     # 11: a shorter last batch
    y = rng.integers(0, 3, 11)
    a, b = _pair()
    before = [w.numpy().copy() for w in a.weights]
    with stand_ins.disabled():
        own = [_outputs(m, x, y) for m in (a, b)]
    shared = [_outputs(a, x, y)]
    traced = inference._predictor(stand_ins.stand_in(a)).experimental_get_tracing_count()
    shared += [_outputs(m, x, y) for m in (b, a)]        # a again: its weights copied back in
    for got, want in zip(shared, own + own[:1]):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert not np.array_equal(own[0][0], own[1][0])         # the two models do differ
    twin = stand_ins.stand_in(a)
    assert twin is stand_ins.stand_in(b) and twin is not a
    # b and a again run on a's traces: none added
    assert inference._predictor(twin).experimental_get_tracing_count() == traced
    assert all(np.array_equal(w.numpy(), v) for w, v in zip(a.weights, before))
    # multi-model attacks give each model a slot of its own
    t = rng.integers(0, 3, (2, 11))
    got = attacks.multi_targeted_pgd_l2([a, b], x, t, eps=0.5, steps=2, step_size=0.2)
    with stand_ins.disabled():
        want = attacks.multi_targeted_pgd_l2([a, b], x, t, eps=0.5, steps=2, step_size=0.2)
    np.testing.assert_array_equal(got, want)


def test_a_stand_in_holds_no_model_and_moves_no_random_state():
    a, _ = _pair()
    ref = weakref.ref(a)
    state = (random.getstate(), np.random.get_state()[1].copy())
    inference.predict(a, np.zeros((2, 16, 16, 3), np.float32))
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    del a
    gc.collect()
    assert ref() is None


class Doubled(keras.layers.Layer):
    """A user's layer: its configuration need not say what it computes."""

    def call(self, x):
        return 2 * x


def test_models_a_configuration_may_not_describe_are_used_as_themselves():
    inputs = keras.Input((4,))
    own = keras.Model(inputs, keras.layers.Dense(2)(Doubled()(inputs)))
    assert stand_ins.stand_in(own) is own

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    sub = Subclassed()
    sub(np.zeros((1, 4), np.float32))
    assert stand_ins.stand_in(sub) is sub
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert stand_ins.stand_in(plain) is not plain


def test_a_model_whose_layers_freeze_gets_the_stand_in_of_what_it_is_now():
    """Which weights train is part of the architecture: a batch norm frozen after the first
    use keeps its statistics through the recomputation, on the stand-in as on the model."""
    a, _ = _pair()
    x = np.random.default_rng(1).random((16, 16, 16, 3)).astype(np.float32)
    first = stand_ins.stand_in(a)
    frozen = inference.batch_norm_layers(a)[0]
    frozen.trainable = False
    kept = [w.numpy().copy() for w in frozen.weights]
    assert stand_ins.stand_in(a) is not first
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    with stand_ins.disabled():
        inference.recompute_bn_statistics(b, [x[:8], x[8:]])
    inference.recompute_bn_statistics(a, [x[:8], x[8:]])
    assert all(np.array_equal(w.numpy(), k) for w, k in zip(frozen.weights, kept))
    for got, want in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(got, want)

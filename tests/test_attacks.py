import keras
import numpy as np
import tensorflow as tf
import pytest

from entangle.core import attacks, loop, objectives

PGD = dict(eps=1.0, steps=10, step_size=0.25)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _norms(d):
    return np.sqrt((d.reshape(len(d), -1).astype(np.float64) ** 2).sum(1))


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_respects_ball_and_box(trained_tiny, targeted, random_start):
    model, x, y = trained_tiny
    t = (y + 1) % 3
    adv = attacks.pgd_l2(model, x, t if targeted else y, targeted=targeted,
                         random_start=random_start, batch_size=50, **PGD)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert np.all(_norms(adv - x) <= PGD["eps"] + 1e-5)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.mean(_norms(adv - x)) > 0.5  # it actually moved


def test_untargeted_pgd_lowers_accuracy(trained_tiny):
    model, x, y = trained_tiny
    clean = _accuracy(model, x, y)
    adv = attacks.pgd_l2(model, x, y, eps=2.0, steps=10, step_size=0.5)
    assert clean > 0.9
    assert _accuracy(model, adv, y) < 0.2
    fgm = attacks.fgm_l2(model, x, y, eps=2.0)
    assert _accuracy(model, fgm, y) < clean - 0.3
    np.testing.assert_allclose(_norms(fgm - x), 2.0, rtol=0.2)


@pytest.mark.parametrize("eps", [0.3, 0.6, 1.0])
def test_pgd_with_restarts_is_never_weaker_than_pgd10(trained_tiny, eps):
    """The stronger reporting attack (50 steps, 5 runs) on its own, against the reporting
    PGD-10 on the same model and images: never a higher robust accuracy; its images stay in
    the ball and the box, and it says which images it left right."""
    model, x, y = trained_tiny
    pgd10 = attacks.pgd_l2(model, x, y, eps=eps, steps=10, step_size=0.25 * eps)
    adv, right = attacks.pgd_l2_restarts(model, x, y, eps=eps, steps=50, step_size=0.05 * eps,
                                         restarts=5)
    assert right.mean() <= _accuracy(model, pgd10, y)
    assert np.array_equal(right, np.argmax(model.predict(adv, verbose=0), 1) == y)
    assert _norms(adv - x).max() <= eps * (1 + 1e-4) and adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(ValueError, match="restarts"):
        attacks.pgd_l2_restarts(model, x, y, eps=eps, steps=5, step_size=0.1, restarts=0)


def test_targeted_pgd_reaches_targets(trained_tiny):
    model, x, y = trained_tiny
    t = (y + 1) % 3
    adv = attacks.pgd_l2(model, x, t, eps=5.0, steps=25, step_size=0.4, targeted=True)
    assert _accuracy(model, adv, t) > 0.9


def test_multi_targeted_with_one_model_equals_targeted(trained_tiny):
    model, x, y = trained_tiny
    t = (y + 2) % 3
    single = attacks.pgd_l2(model, x[:16], t[:16], targeted=True, **PGD)
    multi = attacks.multi_targeted_pgd_l2([model], x[:16], t[None, :16], **PGD)
    np.testing.assert_allclose(single, multi, atol=1e-5)


def test_multi_targeted_two_models_two_targets(trained_tiny):
    """Two different models with distinct targets per image: F2 names class (c + 1) mod 3
    where F1 names c, and the targets ask F1 for y + 1 and F2 for y + 2 (consistent, so both
    can be met). Each model lands on its own target row; with the rows swapped the first
    would land on y + 2."""
    model, x, y = trained_tiny
    shifted = keras.Model(model.inputs, keras.ops.roll(model.outputs[0], 1, axis=-1))
    targets = np.stack([(y + 1) % 3, (y + 2) % 3])
    assert np.all(targets[0] != targets[1])
    adv = attacks.multi_targeted_pgd_l2([model, shifted], x, targets, eps=5.0, steps=25,
                                        step_size=0.4)
    assert np.all(_norms(adv - x) <= 5.0 + 1e-5)
    assert _accuracy(model, adv, targets[0]) > 0.9
    assert _accuracy(shifted, adv, targets[1]) > 0.9


def test_margin_term_of_a_model_already_at_its_target_is_constant(trained_tiny):
    """The budget control: a model that says its target by more than kappa adds nothing to
    the N-targeted objective's gradient; cross-entropy keeps pulling."""
    import tensorflow as tf

    model, x, y = trained_tiny
    pred = np.argmax(model.predict(x, verbose=0), -1)
    logits = model.predict(x, verbose=0)
    margin = np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2]
    sure = (margin > 1.0)
    xs, ts = x[sure][:8], pred[sure][:8]            # "targets" the model already says
    labels = tf.constant(ts[:, None])
    grad = loop.input_gradient(objectives.multi_margin_objective([model], kappa=1.0),
                                  tf.constant(xs), labels).numpy()
    assert np.abs(grad).max() == 0.0
    grad = loop.input_gradient(objectives.multi_model_objective([model]), tf.constant(xs),
                                  labels).numpy()
    assert np.abs(grad).max() > 0.0


def test_first_hit_steps_are_recorded_and_stepwise_equals_one_loop(trained_tiny):
    model, x, y = trained_tiny
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    targets = np.stack([(y[:16] + 1) % 3, (y[:16] + 2) % 3])
    kw = dict(eps=2.0, steps=6, step_size=0.4)
    adv, hit = attacks.multi_targeted_pgd_l2([model, clone], x[:16], targets, **kw,
                                             first_hit=True)
    np.testing.assert_allclose(adv, attacks.multi_targeted_pgd_l2([model, clone], x[:16],
                                                                  targets, **kw), atol=1e-5)
    assert hit.shape == (2, 16) and hit.min() >= -1 and hit.max() <= 6
    final = np.stack([np.argmax(m.predict(adv, verbose=0), -1) for m in (model, clone)])
    assert np.all(hit[final == targets] >= 1)        # said its target at the end: hit before
    margin = attacks.multi_targeted_pgd_l2([model, clone], x[:16], targets, **kw,
                                           loss="margin", kappa=1.0)
    assert np.all(_norms(margin - x[:16]) <= 2.0 + 1e-5)
    with pytest.raises(ValueError, match="loss"):
        attacks.multi_targeted_pgd_l2([model], x[:2], targets[:1, :2], **kw, loss="hinge")


def _linear_model(w):
    inputs = keras.Input((4, 4, 1))
    logits = keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, logits)
    model.layers[-1].set_weights([w])
    return model


def test_matches_closed_form_on_linear_model():
    # For logits W^T x the gradient of CE(y) points along w_other - w_y for every x, so the
    # L2 PGD optimum is x + eps * v / ||v||: the margin drops by exactly eps * ||v||.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 2)).astype("float32") * 0.1
    model = _linear_model(w)
    x = np.full((3, 4, 4, 1), 0.5, np.float32) + rng.uniform(-0.05, 0.05, (3, 4, 4, 1)).astype("float32")
    y = np.zeros(3, np.int64)
    v = (w[:, 1] - w[:, 0]).reshape(4, 4, 1)
    eps = 0.3  # small enough that no pixel leaves [0, 1]
    adv = attacks.pgd_l2(model, x, y, eps=eps, steps=7, step_size=0.1)
    expected = x + eps * v / np.linalg.norm(v)
    np.testing.assert_allclose(adv, expected, atol=1e-5)
    targeted = attacks.pgd_l2(model, x, 1 - y + 0, eps=eps, steps=7, step_size=0.1,
                              targeted=True)
    np.testing.assert_allclose(targeted, expected, atol=1e-5)


def test_linf_pgd_and_fgsm_match_the_closed_form_on_a_linear_model():
    """For logits W^T x the CE gradient is along v = w_other - w_y everywhere: L-infinity PGD
    and FGSM both land on x + eps * sign(v) (the box's corner), L2 on x + eps * v / ||v||."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 2)).astype("float32")
    model = _linear_model(w)
    x = np.full((3, 4, 4, 1), 0.5, np.float32)
    y = np.zeros(3, np.int64)
    v = (w[:, 1] - w[:, 0]).reshape(4, 4, 1)
    eps = 0.1
    corner = x + eps * np.sign(v)
    linf = attacks.pgd(model, x, y, eps=eps, steps=5, step_size=0.03, norm="inf")
    np.testing.assert_allclose(linf, corner, atol=1e-6)
    np.testing.assert_allclose(attacks.fgsm(model, x, y, eps=eps), corner, atol=1e-6)
    np.testing.assert_allclose(attacks.pgd(model, x, y, eps=eps, steps=5, step_size=0.03,
                                           norm=2), attacks.pgd_l2(model, x, y, eps=eps,
                                                                   steps=5, step_size=0.03))
    start = attacks.pgd(model, x, y, eps=eps, steps=1, step_size=1e-6, norm="inf",
                        random_start=True)
    assert np.abs(start - x).max() <= eps + 1e-6 and np.abs(start - x).std() > eps / 4
    with pytest.raises(ValueError, match="norm must be 2 or 'inf'"):
        attacks.pgd(model, x, y, eps=eps, steps=1, step_size=0.1, norm=1)


def test_a_sweep_returns_each_radius_and_its_success_mask(trained_tiny):
    model, x, y = trained_tiny
    s = attacks.sweep(model, x[:16], y[:16], [0, 0.25, 2.0], steps=5)
    assert s.eps == [0.0, 0.25, 2.0] and set(s.adversarial) == set(s.success) == set(s.eps)
    clean = np.argmax(model.predict(x[:16], verbose=0), 1)
    np.testing.assert_array_equal(s.success[0.0], clean != y[:16])
    for e in (0.25, 2.0):
        adv = s.adversarial[e]
        assert np.sqrt(((adv - x[:16]) ** 2).reshape(16, -1).sum(1)).max() <= e + 1e-4
        np.testing.assert_array_equal(
            s.success[e], np.argmax(model.predict(adv, verbose=0), 1) != y[:16])
    rates = s.success_rate()
    assert rates[2.0] > rates[0.0]
    linf = attacks.sweep(model, x[:16], y[:16], [8 / 255], steps=5, norm="inf")
    assert np.abs(linf.adversarial[8 / 255] - x[:16]).max() <= 8 / 255 + 1e-6


def test_empty_input_returns_empty():
    model = _linear_model(np.ones((16, 2), np.float32))
    out = attacks.pgd_l2(model, np.zeros((0, 4, 4, 1), np.float32), np.zeros(0, int), **PGD)
    assert out.shape == (0, 4, 4, 1)


def test_infinite_eps_means_no_projection():
    w = np.zeros((16, 2), np.float32)
    w[0, 1] = 1.0  # the gradient only moves pixel 0
    model = _linear_model(w)
    x = np.full((1, 4, 4, 1), 0.2, np.float32)
    adv = attacks.pgd_l2(model, x, [0], eps=float("inf"), steps=5, step_size=0.1)
    assert adv[0, 0, 0, 0] == pytest.approx(0.7, abs=1e-5)  # 5 steps of 0.1, never projected
    bounded = attacks.pgd_l2(model, x, [0], eps=0.25, steps=5, step_size=0.1)
    assert bounded[0, 0, 0, 0] == pytest.approx(0.45, abs=1e-5)


def test_zero_gradient_gives_no_nan():
    model = _linear_model(np.zeros((16, 2), np.float32))
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    for rs in (False, True):
        adv = attacks.pgd_l2(model, x, [0, 1], eps=0.5, steps=3, step_size=0.1, random_start=rs)
        assert np.all(np.isfinite(adv))
    np.testing.assert_array_equal(attacks.pgd_l2(model, x, [0, 1], **PGD), x)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=-1.0), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(step_size=0.0), "step_size"),
    (dict(step_size=-0.1), "step_size"),
    (dict(batch_size=0), "batch_size"),
    (dict(eps=float("inf"), random_start=True), "random_start"),
])
def test_bad_budget_arguments(kwargs, match):
    model = _linear_model(np.ones((16, 2), np.float32))
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    with pytest.raises(ValueError, match=match):
        attacks.pgd_l2(model, x, [0, 1], **{**PGD, **kwargs})


@pytest.mark.parametrize("x,y,match", [
    (np.full((2, 4, 4, 1), 128, np.int64), [0, 1], "x: images must be uint8.*int64"),
    (np.full((2, 16), 0.5, np.float32), [0, 1], "rank 4"),
    (np.full((2, 4, 4, 1), 1.5, np.float32), [0, 1], r"\[0, 1\]"),
    (np.full((2, 4, 4, 1), 0.5, np.float32), [0, 2], r"\[0, 2\)"),
    (np.full((2, 4, 4, 1), 0.5, np.float32), [0, 1, 1], r"2 class indices.*got shape \(3,\)"),
    (np.full((2, 4, 4, 1), 0.5, np.float32), [[0, 1, 1], [1, 0, 0]], r"got shape \(2, 3\)"),
    (np.full((2, 4, 4, 1), 0.5, np.float32), [[0.5, 0.5], [1, 0]], "one-hot rows"),
    (np.full((2, 4, 4, 1), 0.5, np.float32), [0.0, 1.0], "integer"),
])
def test_bad_inputs(x, y, match):
    model = _linear_model(np.ones((16, 2), np.float32))
    with pytest.raises(ValueError, match=match):
        attacks.pgd_l2(model, x, y, **PGD)


def test_uint8_images_are_attacked_as_their_float_pixels(trained_tiny):
    """The one dtype rule (data.to_float): uint8 0..255 maps onto the bounds, here [0, 1]."""
    model, x, y = trained_tiny
    pixels = np.rint(x[:8] * 255).astype(np.uint8)
    np.testing.assert_array_equal(attacks.pgd_l2(model, pixels, y[:8], **PGD),
                                  attacks.pgd_l2(model, pixels / np.float32(255), y[:8], **PGD))


@pytest.mark.parametrize("norm,eps,step", [("2", 1.0, 0.25), ("inf", 8 / 255, 2 / 255)])
def test_bounds_and_preprocessing_attack_a_0_255_model_like_its_0_1_twin(trained_tiny, norm,
                                                                         eps, step):
    """A model on 0-255 inputs (a Rescaling layer before the [0, 1] model): attacked in its
    own scale with ``bounds=(0, 255)`` and 255x the budget, or in [0, 1] through
    ``preprocess``, it gives the [0, 1] model's adversarial images (scaled)."""
    model, x, y = trained_tiny
    wide = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Rescaling(1 / 255), model])
    x, y = x[:16], y[:16]
    budget = dict(steps=6, norm=norm, random_start=True, seed=3)
    ref = attacks.pgd(model, x, y, eps=eps, step_size=step, **budget)
    own = attacks.pgd(wide, x * 255, y, eps=255 * eps, step_size=255 * step, bounds=(0, 255),
                      **budget)
    assert own.min() >= 0 and own.max() <= 255 and own.max() > 1.5
    np.testing.assert_allclose(own / 255, ref, atol=2e-4)
    through = attacks.pgd(wide, x, y, eps=eps, step_size=step, preprocess=lambda t: t * 255,
                          **budget)
    np.testing.assert_allclose(through, ref, atol=2e-5)
    swept = attacks.sweep(wide, x, y, [eps], steps=6, norm=norm, preprocess=lambda t: t * 255)
    plain = attacks.sweep(model, x, y, [eps], steps=6, norm=norm)
    np.testing.assert_array_equal(swept.success[eps], plain.success[eps])
    assert plain.success_rate()[eps] > 0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\] \(bounds\)"):
        attacks.pgd(wide, x * 255, y, eps=eps, step_size=step, **budget)
    with pytest.raises(ValueError, match="bounds must be finite with low < high"):
        attacks.pgd(model, x, y, eps=eps, step_size=step, bounds=(1, 0), **budget)


def test_labels_as_a_column_or_one_hot_attack_like_indices(trained_tiny):
    model, x, y = trained_tiny
    ref = attacks.pgd_l2(model, x[:6], y[:6], **PGD)
    column = attacks.pgd_l2(model, x[:6], y[:6].reshape(-1, 1), **PGD)
    onehot = attacks.pgd_l2(model, x[:6], np.eye(model.output_shape[-1])[y[:6]], **PGD)
    np.testing.assert_array_equal(column, ref)
    np.testing.assert_array_equal(onehot, ref)


def test_multi_targeted_bad_target_shape(trained_tiny):
    model, x, y = trained_tiny
    with pytest.raises(ValueError, match="targets_per_model"):
        attacks.multi_targeted_pgd_l2([model, model], x[:4], y[:4], **PGD)


def test_compiles_under_xla(trained_tiny):
    model, x, y = trained_tiny
    ref = attacks.pgd_l2(model, x[:8], y[:8], eps=1.0, steps=3, step_size=0.4)
    xla = attacks.pgd_l2(model, x[:8], y[:8], eps=1.0, steps=3, step_size=0.4, jit_compile=True)
    np.testing.assert_allclose(xla, ref, atol=1e-3)


# ---------------------------------------------------------------------------- issue 7


def _confident_linear(policy):
    """A linear model with margin ~25 on every input (softmax tail ~1e-11), under ``policy``."""
    from entangle.core import train

    with train.dtype_policy(policy):
        inputs = keras.Input((4, 4, 1))
        h = keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(inputs))
        logits = keras.layers.Activation("linear", dtype="float32")(h)
        model = keras.Model(inputs, logits)
    w = np.zeros((16, 2), np.float32)
    w[:, 0] = 6.0  # class 0 wins by 6 * sum(x) = 6 * 16 * 0.3 ~ 29 logits
    w[0, 1] = 1.0
    model.layers[2].set_weights([w])
    return model


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_confident_model_moves_every_example_the_full_step(policy):
    model = _confident_linear(policy)
    x = np.full((8, 4, 4, 1), 0.3, np.float32)
    adv = attacks.pgd_l2(model, x, np.zeros(8, int), eps=0.5, steps=1, step_size=0.1)
    np.testing.assert_allclose(_norms(adv - x), 0.1, rtol=1e-3)  # float16 used to give 0
    ref = attacks.pgd_l2(_confident_linear("float32"), x, np.zeros(8, int), eps=0.5, steps=5,
                         step_size=0.1)
    out = attacks.pgd_l2(model, x, np.zeros(8, int), eps=0.5, steps=5, step_size=0.1)
    np.testing.assert_allclose(out, ref, atol=2e-2)  # same direction under every policy


def _confident_input_gradient_loops(policy):
    """One step of each input-gradient loop on the confident linear model under ``policy``:
    the training attack, zero-/neg-robust construction and robustification. Returns
    name -> (x_start, x_after_one_step, x_after_five_steps)."""
    from entangle.core import construct, robustify, steps, train
    from entangle import data

    model = _confident_linear(policy)
    x = np.full((8, 4, 4, 1), 0.3, np.float32)
    y = np.zeros(8, np.int32)
    out = {}

    def training(n):
        cfg = train.TrainConfig(arch="resnet11v2", eps=0.5, attack_steps=n,
                                attack_step_size=0.1, precision=policy)
        return steps.training_attack(model, cfg)(tf.constant(x), tf.constant(y),
                                                 tf.constant([0, 0])).numpy()

    out["training attack"] = (x, training(1), training(5))
    ds = data.Dataset(x, y.astype(np.int64), ["a", "b"], "confident")

    def constructed(steps):
        cfg = construct.ConstructConfig(eps=0.5, steps=steps, step_size=0.1)
        return np.asarray(construct.construct_dataset("neg_robust", model, ds, cfg,
                                                      verbose=False).x, np.float32)

    out["construction"] = (x, constructed(1), constructed(5))
    x0 = np.full_like(x, 0.5)   # the representation (logits) of 0.3 is the target

    def robustified(steps):
        cfg = robustify.RobustifyConfig(steps=steps, step_size=0.1, layer=2)
        return robustify.robustify(model, x, x0, cfg, verbose=False).x

    out["robustification"] = (x0, robustified(1), robustified(5))
    return out


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_every_input_gradient_loop_moves_the_full_step_under_mixed_precision(policy):
    reference = _confident_input_gradient_loops("float32")
    for name, (start, one, five) in _confident_input_gradient_loops(policy).items():
        # the construction stores float16 images: its steps are exact to float16 rounding
        tol = 5e-3 if name == "construction" else 1e-3
        np.testing.assert_allclose(_norms(one - start), 0.1, rtol=tol, err_msg=name)
        np.testing.assert_allclose(five, reference[name][2], atol=2e-2, err_msg=name)
        assert np.all(_norms(five - start) > 0.3), name   # it kept moving after step one


def test_softmax_models_are_attacked_through_their_logits(trained_tiny):
    model, x, y = trained_tiny
    probs = keras.Model(model.inputs, keras.layers.Softmax()(model.outputs[0]))
    assert objectives.ends_in_softmax(probs) and not objectives.ends_in_softmax(model)
    np.testing.assert_allclose(attacks.pgd_l2(probs, x[:16], y[:16], **PGD),
                               attacks.pgd_l2(model, x[:16], y[:16], **PGD), atol=1e-4)
    dense = keras.Model(model.inputs, keras.layers.Dense(3, activation="softmax")(
        model.get_layer("representation").output))
    logits = objectives.logits_fn(dense)(x[:4])
    np.testing.assert_allclose(keras.ops.softmax(logits), dense(x[:4]), atol=1e-5)


def test_generic_runner_inverts_representations_from_an_explicit_start(trained_tiny):
    from entangle.core import models

    model, x, _ = trained_tiny
    rep = models.representation_model(model)
    target, x0 = x[:16], x[16:32]
    goal = rep(target).numpy()
    out = loop.run_attack(objectives.feature_matching_objective(rep), x0, goal,
                             eps=float("inf"), steps=60, step_size=0.05, batch_size=8)
    before = np.linalg.norm(rep(x0).numpy() - goal, axis=1)
    after = np.linalg.norm(rep(out).numpy() - goal, axis=1)
    assert np.median(after / before) < 0.5
    assert _norms(out - x0).mean() > 0.5  # unbounded: it moved far from its start
    with pytest.raises(ValueError, match="x0"):
        loop.run_attack(objectives.feature_matching_objective(rep), x0, goal, x0=x0[:3],
                           steps=1, step_size=0.1)


def test_attacked_and_evaluated_models_are_freed():
    import gc
    import weakref

    from entangle.core import inference, models

    model = models.resnet_v2(11, (16, 16, 3), 3, width=4)
    x = np.full((4, 16, 16, 3), 0.5, np.float32)
    attacks.pgd_l2(model, x, [0, 1, 2, 0], eps=0.5, steps=2, step_size=0.2)
    attacks.multi_targeted_pgd_l2([model, model], x, np.zeros((2, 4), int), eps=0.5, steps=2,
                                  step_size=0.2)
    inference.accuracy(model, x, np.zeros(4, int))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


REPLICA_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from entangle.core import attacks, models, robustify, seeding
from entangle.runtime import distribution
rng = np.random.default_rng(0)
x = rng.random((13, 16, 16, 3)).astype(np.float32)      # 13: the last batch splits unevenly
y = rng.integers(0, 3, 13)
with seeding.seeded(0):
    model = models.resnet_v2(11, (16, 16, 3), 3, width=4)
mirrored = distribution.get_strategy("mirrored", ("/cpu:0", "/cpu:1"))
out = {}
for name, strategy in (("default", None), ("mirrored", mirrored)):
    adv = attacks.pgd_l2(model, x, y, eps=0.5, steps=4, step_size=0.2, batch_size=8,
                         strategy=strategy, verbose=False)
    rob = robustify.robustify(model, x, x[::-1].copy(), robustify.RobustifyConfig(steps=3),
                              batch_size=8, strategy=strategy, verbose=False).x
    out[name] = {"pgd": adv.tolist(), "robustify": rob.tolist()}
out["replicas"] = mirrored.num_replicas_in_sync
print("RESULT" + json.dumps(out))
"""


def test_attacks_on_two_replicas_equal_the_single_device_result():
    """PGD and robustification split each batch over a strategy's replicas (two logical
    CPUs here, 13 images in batches of 8): the same images as on one device."""
    import json

    from conftest import ENV, run_python

    proc = run_python("-c", REPLICA_SCRIPT, timeout=300, env=ENV)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT"):])
    assert out["replicas"] == 2
    for key in ("pgd", "robustify"):
        single, split = np.array(out["default"][key]), np.array(out["mirrored"][key])
        assert single.shape == split.shape == (13, 16, 16, 3)
        np.testing.assert_allclose(split, single, atol=1e-5)
    x = np.random.default_rng(0).random((13, 16, 16, 3))
    assert np.abs(np.array(out["default"]["pgd"]) - x).max() > 0.01     # the attack moved

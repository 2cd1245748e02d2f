"""An experiment's evaluations, each cached in the store: a model's predictions on a named
set (the one forward pass every accuracy derives from), its PGD accuracy at an eps, and
its accuracy under the stronger attack with restarts.

``Evaluation`` is one of the parts ``pipeline.Experiment`` is made of.
"""

from __future__ import annotations

import os

import numpy as np

from entangle import data
from entangle.core import attacks, inference
from entangle.store import fingerprint_arrays, training

PREDICTIONS_KIND = "predictions"
# Bump when a change alters what Evaluation computes (2: per-image outcomes kept; 3: the
# clean pass comes from the predictions cache, the PGD pass is an artifact of its own).
EVAL_VERSION = 3


class Evaluation:
    """The evaluations of an Experiment (see the module docstring)."""

    def predictions(self, trained: training.TrainedModel, ds: data.Dataset, name: str
                    ) -> np.ndarray:
        """A model's predicted classes on a named set (cached in the store as .npy), keyed on
        the content of both: a rebuilt model or set never meets a stale prediction."""
        config = {"model": trained.key, "model_sha256": model_digest(trained), "set": name,
                  "data": self.fingerprint(ds)}
        key = self.store.key("pred", config)
        path = os.path.join(self.store.path(PREDICTIONS_KIND, key), "predictions.npy")

        def compute():
            return inference.predict(trained.model, ds.x, self.cfg.runtime.eval_batch_size)

        def build():
            pred = compute()
            with self.store.writing(PREDICTIONS_KIND, key, config) as d:
                np.save(os.path.join(d, "predictions.npy"), pred.astype(np.int16))
            if ds is self.splits().test:
                training.log_evaluation(self.store, trained,
                                        {"test_accuracy": np.mean(pred == ds.y)})
            return pred

        return self.cached(PREDICTIONS_KIND, key, build, lambda: np.load(path).astype(np.int64),
                           compute)

    def fingerprint(self, ds: data.Dataset) -> str:
        """The content hash of a set, computed once per set object (its arrays never change
        after loading)."""
        if ds is self.splits().test:
            return self.test_data_key()
        if id(ds) not in self._fingerprints:  # the set is held too, so its id stays its own
            self._fingerprints[id(ds)] = (ds, fingerprint_arrays(np.asarray(ds.x), ds.y))
        return self._fingerprints[id(ds)][1]

    def accuracy_on(self, trained: training.TrainedModel, ds: data.Dataset, name: str) -> dict:
        """Accuracy report of a model on a named set, from its cached predictions."""
        return data.accuracy_report(self.predictions(trained, ds, name), ds.y, ds.num_classes)

    def evaluate(self, trained: training.TrainedModel, eps: float = 0.0,
                 outcomes: bool = False) -> dict:
        """Test accuracy (with balanced accuracy and the majority rate, from the cached
        predictions on Test) and, for eps > 0, PGD accuracy at eps (cached in the store with
        its per-image outcomes); ``outcomes=True`` adds ``clean_correct`` / ``pgd_correct``
        boolean arrays."""
        test = self.splits().test
        pred = self.predictions(trained, test, "Test")
        report = data.accuracy_report(pred, test.y, test.num_classes)
        out = {"test_accuracy": report["accuracy"],
               "balanced_accuracy": report["balanced_accuracy"],
               "majority_rate": report["majority_rate"], "num_test": len(test)}
        if outcomes:
            out["clean_correct"] = pred == test.y
        if eps > 0:
            pgd = self._pgd(trained, eps)
            out.update({k: v for k, v in pgd.items() if k != "pgd_correct"})
            if outcomes:
                out["pgd_correct"] = pgd["pgd_correct"]
        return out

    def _pgd(self, trained: training.TrainedModel, eps: float) -> dict:
        """The reporting PGD at eps on the test set: accuracy, largest perturbation norm and
        per-image outcomes, cached in the store."""
        test = self.splits().test
        ecfg = self.cfg.eval
        config = {"model": trained.key, "model_sha256": model_digest(trained), "eps": eps,
                  "eval": {"attack_steps": ecfg.attack_steps,
                           "step_size_factor": ecfg.step_size_factor},
                  "test": self.test_data_key(), "version": EVAL_VERSION}
        key = self.store.key("pgd", config)
        path = os.path.join(self.store.path("evals", key), "outcomes.npz")

        def compute():
            x = test.float_images()
            batch = self.cfg.runtime.eval_batch_size
            adv = attacks.pgd_l2(trained.model, x, test.y, eps=eps, steps=ecfg.attack_steps,
                                 step_size=ecfg.step_size_factor * eps / ecfg.attack_steps,
                                 batch_size=batch, jit_compile=self.cfg.runtime.jit_compile,
                                 strategy=self.attack_strategy())
            right = inference.predict(trained.model, adv, batch) == test.y
            return {"pgd_accuracy": float(right.mean()),
                    "pgd_norm_max": float(np.sqrt(((adv - x) ** 2).reshape(len(x), -1)
                                                  .sum(1)).max()), "pgd_correct": right}

        def build():
            result = self._write_outcomes(key, config, compute(), "pgd_correct", load)
            training.log_evaluation(self.store, trained,
                                    {f"pgd_accuracy_eps{eps:g}": result["pgd_accuracy"]})
            return result

        def load():
            with np.load(path) as z:
                return {**self.store.manifest("evals", key)["metrics"],
                        "pgd_correct": z["pgd_correct"]}

        return self.cached("evals", key, build, load, compute)

    def evaluate_strong(self, trained: training.TrainedModel, eps: float) -> dict:
        """Robust accuracy at ``eps`` under the stronger attack of ``cfg.eval`` on its test
        images: per image the worst case of the reporting PGD (``evaluate``) and PGD with
        random restarts (``attacks.pgd_l2_restarts``, run on the images the first left
        right), so it is never weaker than the first. Cached in the store with the per-image
        outcomes (``strong_correct``)."""
        test = self.splits().test
        ecfg = self.cfg.eval
        n = len(test) if ecfg.strong_images is None else min(len(test), ecfg.strong_images)
        config = {"model": trained.key, "model_sha256": model_digest(trained), "eps": eps,
                  "steps": ecfg.strong_steps, "restarts": ecfg.strong_restarts,
                  "step_size_factor": ecfg.step_size_factor, "images": n,
                  "after": {"attack_steps": ecfg.attack_steps},
                  "test": self.test_data_key(), "version": EVAL_VERSION}
        key = self.store.key("strong", config)
        path = os.path.join(self.store.path("evals", key), "outcomes.npz")

        def compute():
            right = np.array(self.evaluate(trained, eps, outcomes=True)["pgd_correct"][:n])
            rows = np.flatnonzero(right)
            if len(rows):
                _, still = attacks.pgd_l2_restarts(
                    trained.model, test.float_images()[rows], test.y[rows], eps=eps,
                    steps=ecfg.strong_steps,
                    step_size=ecfg.step_size_factor * eps / ecfg.strong_steps,
                    restarts=ecfg.strong_restarts,
                    batch_size=self.cfg.runtime.eval_batch_size,
                    jit_compile=self.cfg.runtime.jit_compile, verbose=False)
                right[rows] = still
            return {"strong_pgd_accuracy": float(right.mean()), "images": n,
                    "strong_correct": right}

        def build():
            result = self._write_outcomes(key, config, compute(), "strong_correct", load)
            training.log_evaluation(
                self.store, trained,
                {f"strong_pgd_accuracy_eps{eps:g}": result["strong_pgd_accuracy"]})
            return result

        def load():
            with np.load(path) as z:
                return {**self.store.manifest("evals", key)["metrics"],
                        "strong_correct": z["strong_correct"]}

        return self.cached("evals", key, build, load, compute)

    def _write_outcomes(self, key: str, config: dict, result: dict, outcomes: str, load):
        """Stores an attack evaluation: its numbers in the manifest, its per-image outcomes
        (``result[outcomes]``) as outcomes.npz; returns it as loaded."""
        metrics = {k: v for k, v in result.items() if k != outcomes}
        with self.store.writing("evals", key, config, metrics=metrics) as d:
            np.savez(os.path.join(d, "outcomes.npz"), **{outcomes: result[outcomes]})
        return load()

    def strong_attack_label(self) -> str | None:
        """How the stronger attack is described in reports (None when it is off)."""
        e = self.cfg.eval
        if not e.strong_restarts:
            return None
        n = len(self.splits().test) if e.strong_images is None else \
            min(e.strong_images, len(self.splits().test))
        return (f"per image the worst of that PGD and L2 PGD of {e.strong_steps} steps of "
                f"{e.step_size_factor:g} eps / {e.strong_steps} with {e.strong_restarts} runs "
                f"(the first from x, then random starts in the ball, each on the images still "
                f"right), first {n} test images")


def model_digest(trained: training.TrainedModel) -> str | None:
    """SHA-256 of a stored model's weights file (None for models stored before checksums)."""
    return (trained.manifest.get("files") or {}).get("model.keras", {}).get("sha256")



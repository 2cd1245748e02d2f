"""How an experiment's artifacts are built: its classifiers (through the store's trainer),
the zero-/neg-robust training sets (``core.construct`` on the source model) and the
robustified test sets (``core.robustify`` on each generator), each in resumable chunks,
stored under the keys of ``keys.Keys``, built once among processes sharing the store.

``Builders`` is one of the parts ``pipeline.Experiment`` is made of.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from entangle import data
from entangle.core import construct, inference, robustify, train
from entangle.runtime import atomic, distribution
from entangle.store import training

DATASET_KIND = "datasets"
# Images per resumable chunk of a built set: a kill loses at most this much work.
CHUNK_IMAGES = 1024


class Builders:
    """The builders of an Experiment (see the module docstring)."""

    def build_chunks(self, workdir: str, n: int, make) -> None:
        """Builds ``n`` images in resumable chunks of ``CHUNK_IMAGES`` into ``workdir``
        (``atomic.build_chunks``: a kill loses at most one chunk), with a progress bar; the
        caller assembles the parts it needs (``atomic.assemble_chunks``)."""
        atomic.build_chunks(workdir, n, CHUNK_IMAGES, make, bar=self.progress_bar(n))

    def log(self, msg: str):
        if self.cfg.runtime.verbose:
            print(msg, flush=True)

    def model(self, kind: str, eps: float = 0.0, role: str = "generator",
              runtime: train.RuntimeOptions | None = None) -> training.TrainedModel:
        """The trained model of a kind (eps for robust ones) in a role, from the store or
        trained now; each role is trained independently (same hyperparameters)."""
        cfg = self.train_config(kind, eps, role)
        sp = self.splits()
        if kind in construct.KINDS:
            if self.store.has(training.MODEL_KIND, self.model_key(kind, eps, role)):
                fit, val = sp.train, None  # cache hit: the data is not needed
            else:
                fit, val = self.constructed(kind)
                if cfg.early_stopping and self.cfg.data.validation == "clean":
                    val = sp.val_part()
        elif cfg.early_stopping:
            fit, val = sp.fit_part(), sp.val_part()
        else:
            fit, val = sp.train, None
        return training.train_classifier(cfg, fit, val, self.store,
                                      name=self.model_name(kind, eps),
                                      runtime=runtime or self.cfg.runtime,
                                      data_key=self.model_data_key(kind, cfg))

    def victim(self, name: str, runtime: train.RuntimeOptions | None = None
               ) -> training.TrainedModel:
        """A keras.applications victim fine-tuned (or trained from scratch: ``pretrained``
        False) on the training split, from the store or trained now."""
        cfg = self.victim_config(name)
        sp = self.splits()
        fit, val = (sp.fit_part(), sp.val_part()) if cfg.early_stopping else (sp.train, None)
        return training.train_classifier(cfg, fit, val, self.store, name=name,
                                      runtime=runtime or self.cfg.runtime,
                                      data_key=self.model_data_key("victim", cfg))

    def attack_strategy(self):
        """The strategy whose replicas share every attack batch (PGD evaluation,
        construction, robustification): the run's on one host; None under multi-worker,
        where each process attacks on its own devices (the loops hold no collectives that
        would keep the workers in step)."""
        strategy = distribution.get_strategy(self.cfg.runtime.strategy)
        if getattr(strategy, "cluster_resolver", None) is not None:
            return None
        return strategy

    def cached(self, kind: str, key: str, build, load, compute=None):
        """The artifact, loaded or built (``build``) under the store's lock. ``compute``: the
        same value without writing, for a process that does not write (a non-chief worker)
        when the store lacks it: such a process must neither write nor wait on a chief that
        may never build this."""
        if compute is not None and not self.writes() and not self.store.has(kind, key):
            return compute()
        return self.store.get_or_build(kind, key, build, load, poll=self.cfg.runtime.lock_poll,
                                       log=self.log)

    def constructed(self, kind: str, runtime: train.RuntimeOptions | None = None
                    ) -> tuple[data.Dataset, data.Dataset | None]:
        """The zero-/negative-robust set built on the standard model: (train part, validation
        part labelled with targets, or None when validating on clean images)."""
        key = self.constructed_key(kind)
        path = self.store.path(DATASET_KIND, key)
        names = self.splits().train.class_names

        def load():
            parts = []
            for part in ("train", "val"):
                if os.path.exists(os.path.join(path, f"x_{part}.npy")):
                    parts.append(data.Dataset(np.load(os.path.join(path, f"x_{part}.npy"),
                                                      mmap_mode="r"),
                                              np.load(os.path.join(path, f"y_{part}.npy")),
                                              names, f"{kind}:{part}"))
                else:
                    parts.append(None)
            return parts[0], parts[1]

        return self.store.get_or_build(DATASET_KIND, key, lambda: self._construct(kind, key),
                                       load, poll=self.cfg.runtime.lock_poll, log=self.log,
                                       wait=(runtime or self.cfg.runtime).wait)

    def _construct(self, kind: str, key: str):
        source = self.model("standard", role=self.cfg.construct.source_role)
        sp = self.splits()
        ccfg = self.cfg.construct
        parts = {"train": sp.fit_part()}
        if self.cfg.data.validation == "constructed":
            parts["val"] = sp.val_part()
        self.log(f"[{kind}] constructing {key}: targeted PGD (eps {ccfg.eps}, {ccfg.steps} "
                  f"steps of {ccfg.step_size}) on {sum(len(p) for p in parts.values())} images")
        start = time.time()
        partial = self.store.partial_path(DATASET_KIND, key)
        batch = self.cfg.runtime.eval_batch_size
        metrics = {}
        with self.store.writing(DATASET_KIND, key, {"construct": ccfg.key_fields(kind),
                                                    "kind": kind, "source": source.key,
                                                    "validation": self.cfg.data.validation},
                                metrics=metrics) as d:
            for part, ds in parts.items():
                pcfg = ccfg if part == "train" else dataclasses.replace(ccfg,
                                                                        seed=ccfg.seed + 7919)
                work = os.path.join(partial, part)
                index, targets = construct.construct_targets(kind, ds.y, ds.num_classes, pcfg)
                self.build_chunks(work, len(index), construct.chunk_maker(
                    source.model, ds, index, targets, pcfg, batch_size=batch,
                    jit_compile=self.cfg.runtime.jit_compile,
                    strategy=self.attack_strategy()))
                x = atomic.assemble_chunks(work, "x", os.path.join(d, f"x_{part}.npy"))
                np.save(os.path.join(d, f"y_{part}.npy"), targets.astype(np.int64))
                metrics[f"targeted_success_on_source_{part}"] = inference.accuracy(
                    source.model, x, targets, batch)
                metrics[f"size_{part}"] = len(targets)
                del x
            metrics["seconds"] = time.time() - start
        return self.constructed(kind)

    def robustified(self, eps: float, runtime: train.RuntimeOptions | None = None
                    ) -> tuple[data.Dataset, dict]:
        """R_eps: the test set robustified w.r.t. the eps-robust model (eps 0: standard), with
        per-image seeds and relative representation distances; built in chunks (a kill loses
        at most one) and stored as float16."""
        key = self.robustified_key(eps)
        path = self.store.path(DATASET_KIND, key)
        test = self.splits().test

        def load():
            extra = {k: np.load(os.path.join(path, f"{k}.npy"))
                     for k in ("seeds", "relative_distance")}
            return data.Dataset(np.load(os.path.join(path, "x.npy"), mmap_mode="r"), test.y,
                                test.class_names, f"R{eps:g}"), extra

        def build():
            gen = self.model(*self.generator_spec(eps))
            rcfg = self.robustify_config()
            seeds = self.seed_images()
            self.log(f"[R{eps:g}] robustifying {len(test)} test images w.r.t. {gen.key} "
                      f"({rcfg.steps} steps of {rcfg.step_size})")
            start = time.time()
            batch = self.cfg.runtime.eval_batch_size
            work = self.store.partial_path(DATASET_KIND, key)

            def make(rows):
                r = robustify.robustify(gen.model, test.x[rows], test.x[seeds[rows]], rcfg,
                                        batch_size=batch,
                                        jit_compile=self.cfg.runtime.jit_compile, verbose=False,
                                        strategy=self.attack_strategy())
                return {"x": r.x.astype(np.float16), "relative_distance": r.relative_distance}

            self.build_chunks(work, len(test), make)
            config = {"generator": gen.key, "robustify": rcfg.key_fields(), "eps": eps}
            metrics = {}
            with self.store.writing(DATASET_KIND, key, config, metrics=metrics) as d:
                atomic.assemble_chunks(work, "x", os.path.join(d, "x.npy"))
                rel = atomic.assemble_chunks(work, "relative_distance",
                                             os.path.join(d, "relative_distance.npy"))
                np.save(os.path.join(d, "seeds.npy"), seeds)
                metrics.update(median_relative_distance=float(np.median(rel)),
                               seconds=time.time() - start)
            return load()

        return self.store.get_or_build(DATASET_KIND, key, build, load,
                                       poll=self.cfg.runtime.lock_poll, log=self.log,
                                       wait=(runtime or self.cfg.runtime).wait)

    def progress_bar(self, n: int):
        from entangle.runtime import progress
        return progress.progbar(n, enabled=self.cfg.runtime.verbose, unit_name="image")


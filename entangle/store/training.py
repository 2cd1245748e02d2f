"""Trained classifiers in the artifact store: the key of what determines a model, one
process training it while the others wait, its checkpoints in the store's partial folder,
TensorBoard logs beside it, and the finished ``.keras`` file with its manifest.

The training itself is ``entangle.core.train.fit``; this module only adds the store.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from typing import Callable

import keras

from entangle.core import models, train
from entangle.core.train import ModelFn
from entangle.core.train_config import RuntimeOptions, TrainConfig
from entangle.runtime.distribution import get_strategy, is_chief
from entangle.store import builder_id, fingerprint_arrays, Store

MODEL_KIND = "models"


@dataclasses.dataclass
class TrainedModel:
    model: keras.Model
    key: str
    manifest: dict
    cached: bool


def tensorboard_run(store: Store, key: str, seed: int) -> str:
    """A model's TensorBoard run, named to be read: ``<root>/tensorboard/<kind and
    eps>-seed<seed>-<short hash>`` (the hash keeps models of one kind and seed apart)."""
    name, _, digest = key.rpartition("-")
    return os.path.join(store.root, "tensorboard", f"{name or key}-seed{seed}-{digest[:8]}")


def log_evaluation(store: Store, trained: TrainedModel, scalars: dict) -> None:
    """Evaluation numbers of a stored model (test and attack accuracies) into its
    TensorBoard run, at the step after its last epoch."""
    import tensorflow as tf

    config = trained.manifest.get("config", {})
    seed = config.get("train", {}).get("seed", 0)
    step = int(trained.manifest.get("metrics", {}).get("epochs_run", 0))
    writer = tf.summary.create_file_writer(tensorboard_run(store, trained.key, seed))
    with writer.as_default(step=step):
        for k, v in scalars.items():
            tf.summary.scalar(f"eval/{k}", float(v))
    writer.close()


_ANNOUNCED: set = set()

# The models this process has trained or read, by (store root, key, manifest checksum): a
# verified ``.keras`` file is read once per process however many studies and figures ask for
# it, and a model trained here is never read back. Reading one builds every variable again
# (1.6 s for a ResNet56v2 on the 2-core AMD EPYC). The checksum ties an entry to one build
# of the artifact; the store verifies the files before an entry is used. Oldest out.
_MODELS: collections.OrderedDict = collections.OrderedDict()
MODELS_KEPT = 16


def forget_models() -> None:
    """Lets go of every model kept in memory (a later request reads its file again)."""
    _MODELS.clear()


def _remember(ident: tuple, model: keras.Model) -> keras.Model:
    _MODELS[ident] = model
    _MODELS.move_to_end(ident)
    while len(_MODELS) > MODELS_KEPT:
        _MODELS.popitem(last=False)
    return model


def model_key(store: Store, cfg: TrainConfig, data_key: str, num_classes: int, name: str,
              architecture: str | None = None) -> str:
    """The store key of a trained model: exactly what determines it (``key_fields``)."""
    fields = cfg.key_fields()
    if architecture is not None:  # a user's model: its architecture replaces arch and friends
        for k in ("arch", "width", "weight_decay", "pooling", "bn_momentum", "pretrained",
                  "input_size", "zero_init_residual"):
            fields.pop(k, None)
        fields["architecture"] = hashlib.sha256(architecture.encode()).hexdigest()[:16]
    return store.key(name, {"train": fields, "data": data_key, "num_classes": num_classes,
                            "version": train.VERSION})


def train_classifier(cfg: TrainConfig, train_set, val=None, store: Store | None = None, *,
                     name: str = "model", runtime: RuntimeOptions = RuntimeOptions(),
                     data_key: str | None = None,
                     on_epoch_end: Callable[[int, dict], None] | None = None,
                     model_fn: ModelFn | keras.Model | None = None) -> TrainedModel:
    """Trains (``core.train.fit``) or fetches from ``store`` a classifier on ``train_set`` (a
    ``data.Dataset``, (images, labels) arrays or a finite tf.data.Dataset); returns the model
    with its key and manifest.

    The store key covers ``cfg.key_fields()``, ``name`` and the data (``data_key``, or a content
    hash of the arrays). Among processes sharing the store, one trains and the others wait for
    its result; an interrupted training resumes from its checkpoint in the store.
    """
    if not isinstance(store, Store):
        raise TypeError(f"store must be an entangle.store.Store (where the model is kept); got "
                        f"{type(store).__name__}. Without a store, train with "
                        f"entangle.core.train.fit")
    train_set = train.as_dataset(train_set)
    val = None if val is None else train.as_dataset(val, "val")
    if data_key is None:
        data_key = fingerprint_arrays(train_set.x, train_set.y,
                                      *((val.x, val.y) if val else ()))
    architecture = None
    if model_fn is not None:
        with train.build_seeding(cfg, model_fn):
            probe = train.user_model(model_fn, cfg)
        architecture = models.architecture_signature(probe)
        del probe
    key = model_key(store, cfg, data_key, train_set.num_classes, name, architecture)
    strategy = get_strategy(runtime.strategy, runtime.devices)
    chief = is_chief(strategy)

    def load():
        manifest = store.manifest(MODEL_KIND, key)
        ident = (store.root, key, manifest.get("manifest_sha256"))
        model = _MODELS.get(ident)
        if model is None:
            model = keras.models.load_model(
                os.path.join(store.path(MODEL_KIND, key), "model.keras"))
        return TrainedModel(_remember(ident, model), key, manifest, cached=True)

    def build():
        # Every worker resumes from the chief's checkpoint (a shared file system under
        # multi-worker); only the chief writes to the store. The best weights travel inside
        # the checkpoint, so no worker needs a file of its own.
        partial = (store.partial_path(MODEL_KIND, key) if chief
                   else store.path(MODEL_KIND, key) + ".partial")
        if runtime.verbose and chief and store.root not in _ANNOUNCED:
            _ANNOUNCED.add(store.root)
            print(f"TensorBoard: tensorboard --logdir {os.path.join(store.root, 'tensorboard')}",
                  flush=True)
        if runtime.verbose and os.path.exists(os.path.join(partial, "state.npz")):
            print(f"[{name}] resuming {key} from its checkpoint", flush=True)
        result = train.fit(cfg, train_set, val, runtime=runtime, checkpoint_dir=partial,
                           write_checkpoints=chief,
                           log_dir=tensorboard_run(store, key, cfg.seed) if chief else None, on_epoch_end=on_epoch_end, model_fn=model_fn,
                           name=name, strategy=strategy)
        config = {"train": cfg.key_fields(), "data": data_key, "name": name,
                  "version": train.VERSION}
        extra = dict(metrics=result.metrics, history=result.history,
                     replicas=result.replicas, strategy=result.strategy)
        if not chief:
            return TrainedModel(result.model, key, {"config": config, **extra}, cached=False)
        with store.writing(MODEL_KIND, key, config, **extra) as d:
            result.model.save(os.path.join(d, "model.keras"))
        manifest = store.manifest(MODEL_KIND, key)
        if manifest.get("built_by") == builder_id():    # not another process's copy
            _remember((store.root, key, manifest.get("manifest_sha256")), result.model)
        return TrainedModel(result.model, key, manifest, cached=False)

    log = (lambda msg: print(f"[{name}] {msg}", flush=True)) if runtime.verbose else None
    return store.get_or_build(MODEL_KIND, key, build, load, poll=runtime.lock_poll, log=log,
                              lock=chief, wait=runtime.wait)

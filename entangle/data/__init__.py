"""Datasets as uint8 NHWC arrays plus integer labels (their batches: ``entangle.data.batching``).

Names accepted by :func:`load_dataset`:

* ``cifar10``: tfds ``cifar10`` (train 50,000 / test 10,000).
* ``imagenet9``: tfds ``imagenet_resized/64x64`` restricted to the nine superclasses of
  Ilyas et al. (2019) and relabelled 0..8. imagenet_resized's labels follow the
  downsampled-ImageNet order, so the mapping goes through WordNet ids
  (``resources/imagenet9.json``), never through label indices.
* ``folder:PATH``: ``PATH/{train,test}/<class>/<image>``, sorted class names as labels; decoded
  arrays are cached (atomically, keyed by the folder's file list, sizes and mtimes).
* ``planted``: synthetic images whose robust and non-robust features are known
  (``entangle/planted.py``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from importlib import resources
from typing import Sequence

import numpy as np

from entangle import runtime
from entangle.data import planted as planted_lib
from entangle.runtime.atomic import atomic_save_npz, read_npz

SPLITS = ("train", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetUnavailableError(RuntimeError):
    """The dataset is not prepared locally and may not be downloaded."""


@dataclasses.dataclass
class Dataset:
    """Images (uint8, NHWC) with integer labels and the class names they index."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def subset(self, indices) -> "Dataset":
        return Dataset(self.x[indices], self.y[indices], self.class_names, self.name)

    def float_images(self) -> np.ndarray:
        return to_float(self.x)


def to_float(x: np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """The library's one image-dtype rule: uint8 pixels 0..255 map linearly onto ``bounds``
    (default [0, 1]) as float32; floats pass through as float32; any other dtype (int64,
    bool, ...) is refused, since its scale cannot be known."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        low, high = bounds
        out = x.astype(np.float32) / 255.0
        return out if (low, high) == (0.0, 1.0) else np.float32(low) + out * np.float32(high - low)
    if x.dtype.kind != "f":
        raise ValueError(f"images must be uint8 (0..255) or floating point; got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounding to the nearest level."""
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def dataset_names() -> str:
    return "cifar10, imagenet9, planted, folder:PATH"


def shape_of(name: str) -> tuple[tuple[int, int, int], tuple[str, ...]]:
    """(image shape, class names) of a tfds dataset, known without its data."""
    if name == "cifar10":
        return (32, 32, 3), CIFAR10_CLASSES
    if name == "imagenet9":
        return (64, 64, 3), tuple(imagenet9_spec()["classes"])
    raise ValueError(f"the shape of dataset {name!r} is known only from its data; shapes "
                     "without data: cifar10, imagenet9")


def load_dataset(name: str, split: str, *, data_dir: str | None = None, limit: int | None = None,
                 seed: int = 0, download: str | bool = "auto", cache_dir: str | None = None,
                 planted: "planted_lib.PlantedConfig | None" = None, verbose: bool = True,
                 allow_empty_classes: bool = False) -> Dataset:
    """Loads ``split`` ('train' or 'test') of a named dataset as uint8 arrays.

    ``limit`` keeps a seeded, class-stratified subset of that many images. tfds datasets are
    read from ``data_dir``; one that is not prepared there is downloaded with ``download``
    "yes", never with "no", and with "auto" only after a short connection attempt reached the
    download host, so an offline machine gets an error within seconds rather than tfds' long
    retry loop.
    """
    download = download_mode(download)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None; got {limit}")
    if name == "cifar10":
        ds = _load_tfds("cifar10", split, data_dir, download)
        ds = Dataset(ds["image"], ds["label"].astype(np.int64), CIFAR10_CLASSES, name)
    elif name == "imagenet9":
        ds = _load_imagenet9(split, data_dir, download)
    elif name.startswith("folder:"):
        ds = load_folder(name[len("folder:"):], split, cache_dir=cache_dir, verbose=verbose,
                         allow_empty_classes=allow_empty_classes)
    elif name == "planted":
        ds = make_planted(split, planted or planted_lib.PlantedConfig(seed=seed))
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()}")
    if limit is not None and limit < len(ds):
        ds = ds.subset(stratified_indices(ds.y, limit, seed))
    return ds


def stratified_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of ``n`` indices with each class in proportion, returned sorted."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * n).astype(int)
    for i in np.argsort(-(counts / len(y) * n - quota))[: n - quota.sum()]:
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def balance_classes(ds: Dataset, seed: int = 0) -> Dataset:
    """A seeded subsample with every class cut to the size of the smallest one.

    ImageNet-9 is unbalanced (118 of its 203 ImageNet classes are dogs, ~58 % of the images):
    balanced, chance is 1/9 as the paper says.
    """
    rng = np.random.default_rng([seed, 31])
    classes, counts = np.unique(ds.y, return_counts=True)
    keep = [rng.permutation(np.flatnonzero(ds.y == c))[:counts.min()] for c in classes]
    return ds.subset(np.sort(np.concatenate(keep)))


def accuracy_report(pred: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Accuracy beside balanced accuracy (mean per-class recall) and the majority-class rate.

    On an unbalanced set (ImageNet-9) plain accuracy can beat 1/C by predicting the majority;
    balanced accuracy's chance is 1/C whatever the class frequencies.
    """
    pred, y = np.asarray(pred), np.asarray(y)
    if len(y) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"),
                "majority_rate": float("nan"), "n": 0}
    present = np.unique(y)
    recalls = [float(np.mean(pred[y == c] == c)) for c in present]
    counts = np.bincount(y, minlength=num_classes)
    return {"accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recalls)),
            "majority_rate": float(counts.max() / len(y)), "n": int(len(y))}


def split_validation(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """A seeded, stratified hold-out: (train minus validation, validation)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1); got {fraction}")
    val = stratified_indices(ds.y, max(1, int(round(fraction * len(ds)))), seed)
    keep = np.setdiff1d(np.arange(len(ds)), val)
    return ds.subset(keep), ds.subset(val)


# ---------------------------------------------------------------------------- tfds


DOWNLOAD_MODES = ("auto", "yes", "no")
# Where tfds downloads CIFAR-10 and imagenet_resized from; "auto" tries to reach it first.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def download_mode(value: str | bool) -> str:
    """'auto', 'yes' or 'no' (True/False are 'yes'/'no')."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value not in DOWNLOAD_MODES:
        raise ValueError(f"download must be one of {DOWNLOAD_MODES}; got {value!r}")
    return value


def network_reachable(host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` (or the HTTPS proxy, if one is set) opens within
    ``timeout`` seconds, name lookup included (it runs in a thread that is abandoned if it
    hangs)."""
    import socket
    import threading
    from urllib.parse import urlparse

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host = (parsed.hostname or "", parsed.port or 80)
    result = []

    def attempt():
        try:
            socket.create_connection(host, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _load_tfds(tfds_name: str, split: str, data_dir: str | None, download: str,
               tfds_split: str | None = None, label_map: np.ndarray | None = None) -> dict:
    """A tfds split as uint8 images and int64 labels.

    ``label_map`` (original label -> new label, -1 = drop) is applied inside the tf.data
    pipeline, so only kept images are ever held in memory (ImageNet-9 keeps ~20 % of
    imagenet_resized).
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def load(allow_download: bool):
        return tfds.load(tfds_name, split=tfds_split or split, data_dir=data_dir,
                         download=allow_download, as_supervised=False)

    try:
        data = load(download == "yes")
    except AssertionError as e:  # tfds: "Dataset X: could not find data in DIR"
        if download == "auto" and network_reachable():
            data = load(True)
        else:
            where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
            why = ("--download=no" if download == "no" else
                   f"--download=auto found no network ({DOWNLOAD_HOST[0]} did not answer "
                   f"within 3 s)")
            raise DatasetUnavailableError(
                f"tfds dataset {tfds_name!r} is not prepared in {where!r} and cannot be "
                f"downloaded ({why}). Point --data_dir (data_dir=) at a directory holding "
                f"prepared tfds data, prepare it on a machine with network access (`tfds "
                f"build {tfds_name}`) and copy it here, pass --download=yes where the network "
                f"is reachable, or use a local image folder with --dataset=folder:PATH "
                f"(PATH/train/<class>/*.jpg, PATH/test/<class>/*.jpg). ({e})") from e
    data = data.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int64)))
    if label_map is not None:
        table = tf.constant(label_map, tf.int64)
        data = data.map(lambda img, lab: (img, tf.gather(table, lab))).filter(
            lambda img, lab: lab >= 0)
    images, labels = [], []
    for batch in tfds.as_numpy(data.batch(4096)):
        images.append(batch[0])
        labels.append(batch[1])
    if not images:
        raise ValueError(f"tfds {tfds_name!r} split {tfds_split or split!r} holds no images"
                         f"{' of the requested classes' if label_map is not None else ''}")
    return {"image": np.concatenate(images), "label": np.concatenate(labels)}


def imagenet9_spec() -> dict:
    """The shipped ImageNet-9 definition: class order, standard index ranges, WordNet ids."""
    text = resources.files("entangle").joinpath("resources/imagenet9.json").read_text()
    return json.loads(text)


def imagenet9_label_map(wnids: Sequence[str]) -> np.ndarray:
    """For a dataset whose label i has WordNet id wnids[i]: its ImageNet-9 class, or -1."""
    spec = imagenet9_spec()
    to_class = {w: i for i, c in enumerate(spec["classes"]) for w in spec["wnids"][c]}
    return np.array([to_class.get(w, -1) for w in wnids], np.int64)


def _load_imagenet9(split: str, data_dir: str | None, download: str) -> Dataset:
    import tensorflow_datasets as tfds

    name = "imagenet_resized/64x64"
    mapping = imagenet9_label_map(tfds.builder(name, data_dir=data_dir).info.features[
        "label"].names)
    data = _load_tfds(name, split, data_dir, download, label_map=mapping,
                      tfds_split="validation" if split == "test" else "train")
    return Dataset(data["image"], data["label"], tuple(imagenet9_spec()["classes"]),
                   "imagenet9")


# ---------------------------------------------------------------------------- image folders


def _class_dirs(split_dir: str) -> list[str]:
    return sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))


def _folder_listing(root: str, split: str, allow_empty_classes: bool = False
                    ) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file, label)]) of ``root/split``. Labels number the classes of both
    splits alike: the train and test class lists must match, or this names the difference;
    an empty class folder (which would add a class and change chance) is an error unless
    ``allow_empty_classes``."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"image folder {split_dir!r} does not exist; folder:PATH needs "
                                f"PATH/train/<class>/ and PATH/test/<class>/ sub-folders")
    classes = _class_dirs(split_dir)
    if not classes:
        raise ValueError(f"image folder {split_dir!r} has no class sub-folders")
    for other in SPLITS:
        other_dir = os.path.join(root, other)
        if other != split and os.path.isdir(other_dir) and _class_dirs(other_dir) != classes:
            theirs = _class_dirs(other_dir)
            raise ValueError(
                f"the class folders of {split_dir!r} and {other_dir!r} differ (labels would "
                f"mean different classes): only in {split}: {sorted(set(classes) - set(theirs))}"
                f", only in {other}: {sorted(set(theirs) - set(classes))}. Both splits need "
                f"the same class sub-folders")
    files, empty = [], []
    for label, c in enumerate(classes):
        found = [f for f in sorted(os.listdir(os.path.join(split_dir, c)))
                 if f.lower().endswith(_IMAGE_EXTENSIONS)]
        if not found:
            empty.append(c)
        files += [(os.path.join(split_dir, c, f), label) for f in found]
    if not files:
        raise ValueError(f"image folder {split_dir!r} holds no images ({', '.join(_IMAGE_EXTENSIONS)})")
    if empty and not allow_empty_classes:
        raise ValueError(f"image folder {split_dir!r} has class folders without images: "
                         f"{empty}. An empty class still counts as a class (chance 1/"
                         f"{len(classes)} instead of 1/{len(classes) - len(empty)}); remove "
                         f"them, or pass --allow_empty_classes to keep them")
    return classes, files


def _decode(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except Exception as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from e


def load_folder(root: str, split: str, *, cache_dir: str | None = None,
                verbose: bool = True, allow_empty_classes: bool = False) -> Dataset:
    """Reads ``root/split/<class>/*`` (decoded once, then served from an .npz cache)."""
    root = os.path.abspath(os.path.expanduser(root))
    classes, files = _folder_listing(root, split, allow_empty_classes)
    h = hashlib.sha256(f"{root}|{split}".encode())
    for path, label in files:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = os.path.join(cache_dir or runtime.cache_dir(), "folders",
                         f"{os.path.basename(root)}-{split}-{h.hexdigest()[:16]}.npz")
    name = f"folder:{root}"
    z = read_npz(cache, "decoded-folder cache")
    if z is not None:
        return Dataset(z["x"], z["y"], tuple(str(c) for c in z["classes"]), name)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_decode, [p for p, _ in files], chunksize=256))
    shape = images[0].shape
    for (path, _), im in zip(files, images):
        if im.shape != shape:
            raise ValueError(f"image {path!r} has size {im.shape[1]}x{im.shape[0]}, but "
                             f"{files[0][0]!r} has {shape[1]}x{shape[0]}; all images of a "
                             f"folder dataset must share one size")
    x = np.stack(images)
    y = np.array([label for _, label in files], np.int64)
    atomic_save_npz(cache, x=x, y=y, classes=np.array(classes))
    if verbose:
        print(f"decoded {len(x)} images from {os.path.join(root, split)} in "
              f"{time.time() - start:.1f}s; cached at {cache}")
    return Dataset(x, y, tuple(classes), name)


# ---------------------------------------------------------------------------- planted features


def make_planted(split: str, cfg: planted_lib.PlantedConfig | None = None) -> Dataset:
    """The planted world's ``split`` as uint8 images (deterministic for a configuration;
    the default world when ``cfg`` is None)."""
    x, y, _ = planted_lib.images(cfg or planted_lib.PlantedConfig(), split)
    return Dataset(to_uint8(x), y, _planted_names(cfg), "planted")


def make_planted_probe(cfg: planted_lib.PlantedConfig, feature: str, others: str = "absent",
                       n: int | None = None) -> Dataset:
    """``planted_lib.probe`` as a uint8 Dataset: one pattern type of the label's class only."""
    x, y = planted_lib.probe(cfg, feature, others, n)
    return Dataset(to_uint8(x), y, _planted_names(cfg), f"planted-probe-{feature}-{others}")


def _planted_names(cfg: planted_lib.PlantedConfig) -> tuple[str, ...]:
    return tuple(f"class{c}" for c in range(cfg.num_classes))

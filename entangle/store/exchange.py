"""Models to share: export stored models as self-checking bundles and import them into another
store under the same key, so that a table built elsewhere is a cache hit here.

A bundle ``<key>.entangle-model.zip`` holds the ``.keras`` file, the store manifest (its
configuration, training history and metrics, file checksums and its own SHA-256) and a model
card (``card.json``); the card is also written beside it as JSON and Markdown, and
``SHA256SUMS`` lists every bundle's SHA-256 in ``sha256sum`` form. Import reads a bundle from
a path, a folder of them, or an http(s) URL ending in ``#sha256=<hex>`` (required: a
download is trusted only by its checksum), and checks the manifest's own SHA-256 and every
file's before the model enters the store. The key is the exporter's: import trusts that the
manifest's configuration is what produced the file, as the store itself does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile

from entangle.runtime.atomic import atomic_file
from entangle.store import file_digests, file_sha256, MANIFEST, manifest_digest, Store

KIND = "models"
SUFFIX = ".entangle-model.zip"
SUMS = "SHA256SUMS"
MODEL_FILE = "model.keras"
# provenance of the exporting store: kept under "imported" in the new manifest
_PROVENANCE = ("versions", "built_by", "created", "manifest_sha256")
_STORE_FIELDS = ("kind", "key", "config", "files") + _PROVENANCE


class BundleError(ValueError):
    """A model that cannot be exported or a bundle that cannot be imported: named, with what
    is wrong."""


def evaluations(store: Store) -> dict[str, list[dict]]:
    """The store's evaluations (reporting PGD at each eps) by the model key they measured."""
    out = {}
    for k in store.list("evals"):
        e = store.manifest("evals", k)
        model = e.get("config", {}).get("model")
        if model:
            out.setdefault(model, []).append({"eps": e["config"].get("eps"),
                                              "attack": e["config"].get("eval"),
                                              **e.get("metrics", {})})
    return out


def model_card(store: Store, key: str, evals: list[dict]) -> dict:
    """What a user of the model needs: its configuration, training, checksum and the
    evaluations measured on it (``evaluations(store)[key]``)."""
    m = store.manifest(KIND, key)
    history = m.get("history") or []
    return {"key": key, "name": m.get("config", {}).get("name"), "config": m.get("config"),
            "metrics": m.get("metrics"), "epochs": len(history),
            "last_epoch": history[-1] if history else None,
            "evaluations": sorted(evals, key=lambda e: e["eps"] or 0),
            "model_sha256": m["files"][MODEL_FILE]["sha256"], "versions": m.get("versions"),
            "built_by": m.get("built_by"), "created": m.get("created")}


def card_markdown(card: dict) -> str:
    train = (card.get("config") or {}).get("train", {})
    lines = [f"# Model {card['key']}", "",
             f"{card['name']}, trained {card['epochs']} epochs; built by {card['built_by']} "
             f"on {card['created']}. `model.keras` SHA-256 `{card['model_sha256']}`.", "",
             "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(train.items())]
    if card["last_epoch"]:
        lines += ["", "Last epoch: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                 else f"{k} {v}"
                                                 for k, v in card["last_epoch"].items())]
    if card["evaluations"]:
        lines += ["", "| PGD eps | accuracy under attack |", "|---|---|"]
        lines += [f"| {e['eps']} | {100 * e['pgd_accuracy']:.1f} % |"
                  for e in card["evaluations"] if "pgd_accuracy" in e]
    return "\n".join(lines) + "\n"


def export_models(store: Store, keys: list[str], directory: str) -> list[str]:
    """Writes one verified bundle per model key (``["all"]``: every stored model) into
    ``directory``, with its card beside it and ``SHA256SUMS``; returns the bundle paths."""
    keys = store.list(KIND) if list(keys) == ["all"] else list(keys)
    os.makedirs(directory, exist_ok=True)
    measured = evaluations(store)
    out = []
    for key in keys:
        if not store.has(KIND, key):
            raise BundleError(f"--export: no model {key!r} in {store.root} (python -m "
                              f"experiments.store lists what it holds)")
        problems = store.verify(KIND, key)
        if problems:
            raise BundleError(f"models/{key} is damaged ({'; '.join(problems)}); run "
                              f"--verify and rebuild it before exporting")
        card = model_card(store, key, measured.get(key, []))
        folder = store.path(KIND, key)
        path = os.path.join(directory, key + SUFFIX)
        with atomic_file(path) as f, zipfile.ZipFile(f, "w") as z:
            z.write(os.path.join(folder, MODEL_FILE), MODEL_FILE)
            z.write(os.path.join(folder, MANIFEST), MANIFEST)
            z.writestr("card.json", json.dumps(card, indent=1))
        with atomic_file(os.path.join(directory, key + ".card.json"), "w") as f:
            json.dump(card, f, indent=1)
        with atomic_file(os.path.join(directory, key + ".card.md"), "w") as f:
            f.write(card_markdown(card))
        out.append(path)
    sums = {}                           # earlier exports to this folder keep their lines
    sums_path = os.path.join(directory, SUMS)
    if os.path.exists(sums_path):
        for line in open(sums_path):
            if line.strip():
                digest, name = line.split(None, 1)
                sums[name.strip()] = digest
    sums.update({os.path.basename(p): file_sha256(p) for p in out})
    with atomic_file(sums_path, "w") as f:
        f.writelines(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
    return out


def fetch(url: str, directory: str, timeout: float = 30.0) -> str:
    """Downloads ``url#sha256=<hex>`` into ``directory``; the local path, once its SHA-256
    matches (else BundleError naming the URL)."""
    m = re.fullmatch(r"(https?://[^#]+)#sha256=([0-9a-fA-F]{64})", url)
    if not m:
        raise BundleError(f"{url}: an http(s) bundle needs its checksum, as "
                          f"URL#sha256=<64 hex digits> (from the exporter's {SUMS})")
    address, expected = m[1], m[2].lower()
    path = os.path.join(directory, os.path.basename(address.rstrip("/")) or "bundle.zip")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(address, timeout=timeout) as r, open(path, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                f.write(block)
    except OSError as e:
        raise BundleError(f"{address}: cannot download ({e})") from e
    if h.hexdigest() != expected:
        raise BundleError(f"{address}: SHA-256 {h.hexdigest()} is not the {expected} given")
    return path


def bundles_in(source: str) -> list[str]:
    """The bundle files a source names: one bundle, or every bundle in a folder."""
    if os.path.isdir(source):
        found = sorted(os.path.join(source, n) for n in os.listdir(source) if n.endswith(SUFFIX))
        if not found:
            raise BundleError(f"{source}: no *{SUFFIX} bundles in this folder")
        return found
    if not os.path.exists(source):
        raise BundleError(f"{source}: no such bundle or folder")
    return [source]


def import_models(store: Store, sources: list[str]) -> list[tuple[str, str]]:
    """Adds every bundle of ``sources`` (paths, folders, URLs with #sha256=) to ``store``;
    returns (key, "imported" or "already stored") per bundle."""
    out = []
    with tempfile.TemporaryDirectory() as downloads:
        for source in sources:
            local = (fetch(source, downloads) if re.match(r"https?://", source)
                     else source)
            for path in bundles_in(local):
                out.append(import_bundle(store, path, source))
    return out


def import_bundle(store: Store, path: str, source: str | None = None) -> tuple[str, str]:
    """One bundle into ``store`` after checking its manifest and files (BundleError)."""
    try:
        with zipfile.ZipFile(path) as z:
            record = json.loads(z.read(MANIFEST))
            with tempfile.TemporaryDirectory() as unpacked:
                z.extract(MODEL_FILE, unpacked)
                return _install(store, record, unpacked, source or path)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not an entangle model bundle ({e})") from e


def _install(store: Store, record: dict, unpacked: str, source: str) -> tuple[str, str]:
    key = record.get("key", "")
    if record.get("kind") != KIND or not re.fullmatch(r"[\w.-]+", key):
        raise BundleError(f"{source}: its manifest names no model key")
    if record.get("manifest_sha256") != manifest_digest(record):
        raise BundleError(f"{source}: its manifest does not match its own SHA-256 "
                          f"(edited or damaged)")
    if file_digests(unpacked) != record.get("files"):
        raise BundleError(f"{source}: {MODEL_FILE} does not match its SHA-256 in the "
                          f"manifest")
    if store.has(KIND, key) and store.intact(KIND, key):     # a damaged copy is moved aside
        return key, "already stored"
    extra = {k: v for k, v in record.items() if k not in _STORE_FIELDS}
    extra["imported"] = {"from": source, **{k: record.get(k) for k in _PROVENANCE}}
    with store.writing(KIND, key, record["config"], **extra) as d:
        shutil.copy(os.path.join(unpacked, MODEL_FILE), os.path.join(d, MODEL_FILE))
    return key, "imported"

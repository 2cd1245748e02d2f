"""Models to share: a model exported from one store and imported into another (from a folder
through the store binary, or over http from 127.0.0.1 with its checksum) is a cache hit
there; a damaged bundle or a wrong checksum is refused by name."""

import functools
import http.server
import json
import threading
import zipfile

import numpy as np
import pytest

from entangle import data
from entangle.core import inference, train
from entangle.data import planted as planted_lib
from entangle.store import exchange, file_sha256, Store, training
from conftest import run_binary

PLANTED = planted_lib.PlantedConfig(image_size=16, num_classes=3, train_size=96, test_size=32)
CFG = train.TrainConfig(arch="resnet11v2", width=4, batch_size=32, epochs=1, augment=False)
QUIET = train.RuntimeOptions(verbose=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model trained in store A and exported with the store binary."""
    base = tmp_path_factory.mktemp("exchange")
    tr, te = data.make_planted("train", PLANTED), data.make_planted("test", PLANTED)
    trained = training.train_classifier(CFG, tr, None, Store(str(base / "a")), runtime=QUIET)
    out = base / "shared"
    proc = run_binary("store", f"--workdir={base / 'a'}", f"--export={trained.key}",
                      f"--export_dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base, tr, te, trained, out


def test_an_exported_model_imported_by_the_binary_is_a_cache_hit(exported):
    base, tr, te, trained, out = exported
    bundle = out / (trained.key + exchange.SUFFIX)
    card = json.load(open(out / (trained.key + ".card.json")))
    assert card["key"] == trained.key and card["epochs"] == 1
    assert card["model_sha256"] == trained.manifest["files"]["model.keras"]["sha256"]
    assert f"{file_sha256(str(bundle))}  {bundle.name}" in open(out / "SHA256SUMS").read()
    assert trained.key in open(out / (trained.key + ".card.md")).read()

    proc = run_binary("store", f"--workdir={base / 'b'}", f"--import_models={out}",
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"models/{trained.key}: imported" in proc.stdout
    b = Store(str(base / "b"))
    assert b.verify("models", trained.key) == []
    assert b.manifest("models", trained.key)["imported"]["from"] == str(out)
    again = training.train_classifier(CFG, tr, None, b, runtime=QUIET)
    assert again.cached and again.key == trained.key
    np.testing.assert_array_equal(inference.predict(again.model, te.float_images()),
                                  inference.predict(trained.model, te.float_images()))
    assert exchange.import_models(b, [str(out)]) == [(trained.key, "already stored")]


def test_a_url_needs_its_checksum_and_a_damaged_bundle_is_refused(exported, tmp_path):
    base, _, _, trained, out = exported
    bundle = out / (trained.key + exchange.SUFFIX)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{bundle.name}"
        c = Store(str(tmp_path / "c"))
        with pytest.raises(exchange.BundleError, match="needs its checksum"):
            exchange.import_models(c, [url])
        with pytest.raises(exchange.BundleError, match="is not the"):
            exchange.import_models(c, [url + "#sha256=" + "0" * 64])
        digest = file_sha256(str(bundle))
        assert exchange.import_models(c, [f"{url}#sha256={digest}"]) == [
            (trained.key, "imported")]
        assert c.verify("models", trained.key) == []
    finally:
        server.shutdown()

    edited = tmp_path / ("edited" + exchange.SUFFIX)    # its manifest's history changed
    with zipfile.ZipFile(bundle) as z, zipfile.ZipFile(edited, "w") as w:
        for name in z.namelist():
            body = z.read(name)
            if name == "manifest.json":
                record = json.loads(body)
                record["metrics"] = {**(record.get("metrics") or {}), "best_val_accuracy": 1.0}
                body = json.dumps(record).encode()
            w.writestr(name, body)
    with pytest.raises(exchange.BundleError, match="own SHA-256"):
        exchange.import_models(Store(str(tmp_path / "d")), [str(edited)])
    with pytest.raises(exchange.BundleError, match="no such bundle"):
        exchange.import_models(Store(str(tmp_path / "d")), [str(tmp_path / "missing.zip")])

"""The paper's own code path, end to end: flags/cifar10_paper.cfg and flags/imagenet9_paper.cfg
with every paper value except sizes, on tfds mock data, to the table and the figures; and
transfer to a victim that loads ImageNet weights from a Keras cache, offline.

Kept from the paper: ResNet56v2 with the Keras example's pooling (CIFAR), ResNet20v2 at 64 px
with its 1,024-d representation (ImageNet-9), ten targets per image (CIFAR zero-robust), the
step learning-rate schedule, early stopping with patience, A.2's 16-step (CIFAR) and 8-step
(ImageNet-9) training PGD, Table 4's budgets and step sizes. Shrunk: images (20 per split),
epochs (2), batch size (10). Cut, because on tens of images they are still minutes through
ResNet56v2 on a 2-core CPU: construction 200 -> 2 steps, robustification 400/200 -> 3,
transfer 100 -> 2, the generator report's PGD 20 -> 2; and the columns to R_0 and the robust
row's own R_eps (each further column is one more ResNet56v2 robust model, ~35 s here; the
five-column plan runs in the smoke tests). The ETA's op probes are off: they cost 117 s of the
CIFAR path's 435 s on the 2-core AMD EPYC, and test_estimate tests them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ENV, ROOT, run_shared_dir, smoke_flags

IMAGES = 20
CUTS = ["--epochs=2", "--batch_size=10", "--construct_steps=2", "--robustify_steps=3",
        "--transfer_steps=2", "--eval_attack_steps=2", "--eval_batch_size=40", "--quiet",
        "--noprobe_rates"]
CIFAR = ["--columns=0,1/2", *CUTS]

# A victim whose ImageNet weights come from the Keras cache: the file is made with the
# victim's own architecture (keras.applications, weights=None) in a temporary $KERAS_HOME.
TRANSFER = """
import json, sys
import h5py
import keras
import numpy as np
import tensorflow_datasets as tfds
from keras.src.legacy.saving import legacy_h5_format
from absl import flags
from entangle import flags as ef
from entangle.core import models
from entangle.report import transfer as report_transfer
from entangle.studies import pipeline, transfer

path = models._keras_cache_dir() + "/" + models._VICTIMS["mobilenet_v2"][3]
keras.utils.set_random_seed(7)
backbone = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
fv = flags.FlagValues()
ef.define_all(fv)
ef.parse(sys.argv[1:], fv)
with tfds.testing.mock_data(num_examples=%d):
    result = transfer.run_transfer(ef.experiment_config(fv), ef.transfer_config(fv),
                                   log=lambda m: None)
    files = report_transfer.write_transfer(result, fv.results_dir)
    exp = pipeline.Experiment(ef.experiment_config(fv))
    victim = exp.victim("mobilenet_v2").model
conv = next(l for l in victim.layers if isinstance(l, keras.Model)).get_layer("Conv1")
conv, made = conv.kernel.numpy(), backbone.get_layer("Conv1").kernel.numpy()
print(json.dumps({"weights": result.victim_weights, "built": result.built,
                  "records": len(result.records), "files": sorted(files),
                  "conv1_moved": float(np.abs(conv - made).max()),
                  "conv1_scale": float(np.abs(made).max())}))
""" % IMAGES


def _table(fv, results, images=IMAGES, kinds=("standard", "zero_robust")):
    """Builds the table and Figure 2 on mock data (``images`` per split, before ImageNet-9
    keeps its nine superclasses' share); returns (config, result, figure, the manifests of
    ``kinds``' models, the standard model, the images the early-stopped models fit on)."""
    import tensorflow_datasets as tfds

    from entangle import flags as entangle_flags
    from entangle import report
    from entangle.report import figures as report_figures
    from entangle.studies import entanglement, figures, pipeline

    with tfds.testing.mock_data(num_examples=images):
        exp_cfg = entangle_flags.experiment_config(fv)
        cfg = entangle_flags.table_config(fv)
        result = entanglement.run_table(exp_cfg, cfg, log=lambda m: None)
        result.files = report.write_table(result, str(results), "paper path")
        grid = figures.run_figure2(exp_cfg, cfg, log=lambda m: None)
        figure = report_figures.write_grid(grid, str(results / "fig2"))
        exp = pipeline.Experiment(exp_cfg)
        # zero-/neg-robust are rows only; the standard model is R_0's generator
        manifests = {k: exp.store.manifest("models", exp.model_key(
            k, 0.0, "generator" if k == "standard" else "row")) for k in kinds}
        standard = exp.model("standard").model
        n_fit = len(exp.splits().fit_part())
    return exp_cfg, result, figure, manifests, standard, n_fit


@pytest.fixture(scope="module")
def cifar_paper(tmp_path_factory):
    """The CIFAR-10 paper path's table, built once per run on a store every worker shares (the
    table and transfer tests each need it, often on two workers): (work, _table's tuple)."""
    work = run_shared_dir(tmp_path_factory, "cifar_paper")
    return work, _table(smoke_flags(*CIFAR, f"--workdir={work}", flagfile="cifar10_paper.cfg"),
                        tmp_path_factory.mktemp("cifar_results"))


def test_cifar_paper_path_reaches_the_table_and_figures(cifar_paper):
    exp_cfg, result, figure, manifests, _, n_fit = cifar_paper[1]
    assert result.columns == ["Test", "R_0", "R_1/2"]
    assert result.rows == ["standard", "robust (eps 0.5)", "zero_robust", "neg_robust"]
    assert all(np.isfinite(c["accuracy"]) for r in result.cells.values() for c in r.values())
    assert result.paper["standard"]["Test"] is not None          # CIFAR's reference numbers
    for name in ("md", "csv", "json", "png"):
        assert os.path.getsize(result.files[name]) > 0
    assert os.path.getsize(figure["png"]) > 0
    h = exp_cfg.hparams
    assert (h["standard"].arch, h["standard"].pooling) == ("resnet56v2", "keras_example")
    assert h["robust"].attack_steps == 16 and h["zero_robust"].early_stopping
    standard = manifests["standard"]
    assert standard["config"]["train"]["lr_decay"] == "step"
    from entangle.core import schedules

    # the step schedule by optimiser step: epoch 2 starts past 40 % of the steps (x0.1), and
    # on mock data's few steps per epoch past 60 % too (x0.01)
    steps = standard["metrics"]["steps_per_epoch"]
    lrs = [e["lr"] for e in standard["history"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] in (pytest.approx(1e-4), pytest.approx(1e-5))
    assert lrs == pytest.approx([schedules.learning_rate_at(h["standard"], e, steps)
                                 for e in (0, 1)])
    zero = manifests["zero_robust"]
    assert zero["metrics"]["batch_norm"]["images"] == 10 * n_fit   # ten targets (A.2)
    assert all("val_accuracy" in e for e in zero["history"])    # early stopping validates


@pytest.mark.slow
def test_imagenet9_paper_path_reaches_the_table(tmp_path):
    fv = smoke_flags("--columns=0,1", *CUTS, f"--workdir={tmp_path}",
                     flagfile="imagenet9_paper.cfg")
    exp_cfg, result, figure, manifests, model, n_fit = _table(fv, tmp_path / "results",
                                                              3 * IMAGES)
    assert result.columns == ["Test", "R_0", "R_1"] and result.chance == pytest.approx(1 / 9)
    assert result.rows[1] == "robust (eps 1)"           # Table 6's robust row
    assert result.paper["standard"]["Test"] == 94.8     # ImageNet-9's reference numbers
    assert all(np.isfinite(c["balanced_accuracy"]) for r in result.cells.values()
               for c in r.values())
    assert os.path.getsize(result.files["png"]) > 0 and os.path.getsize(figure["png"]) > 0
    from entangle.core import models

    assert model.input_shape[1:] == (64, 64, 3)
    assert models.representation_model(model).output_shape[-1] == 1024   # 2x2x256
    assert exp_cfg.hparams["robust"].attack_steps == 8
    assert manifests["zero_robust"]["metrics"]["batch_norm"]["images"] == n_fit  # one target


def test_transfer_paper_path_loads_imagenet_weights_from_the_keras_cache(cifar_paper, tmp_path):
    from entangle.flags import flagfile

    work = cifar_paper[0]
    (tmp_path / "models").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", TRANSFER, f"--flagfile={flagfile('cifar10_paper.cfg')}", *CIFAR,
         "--sources=0,1/2", "--victims=mobilenet_v2", "--victim_weights=imagenet",
         f"--workdir={work}", f"--results_dir={tmp_path / 'results'}"],
        cwd=ROOT, env={**ENV, "KERAS_HOME": str(tmp_path)}, capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["weights"] == "imagenet" and out["records"] > 0
    assert {"md", "csv", "json"} <= set(out["files"])
    # the sources came from the table's store; the victim and the attack sets were built
    assert len(out["built"]) == 1 + 2 * 2
    # the victim started from the file's weights: two epochs at 1e-4 barely move them
    assert out["conv1_moved"] < 0.05 * out["conv1_scale"]

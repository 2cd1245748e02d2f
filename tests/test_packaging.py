"""Installed use: a non-editable install holds only the ``entangle`` package (flagfiles
inside) and runs the smoke table through the ``entangle`` command from any directory; the
library never imports the layers above it."""

import ast
import glob
import os
import shutil
import subprocess
import sys
from conftest import ROOT



def test_a_non_editable_install_runs_the_smoke_table_from_any_directory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "entangle"), src / "entangle",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                              "--no-build-isolation", "--no-compile", f"--target={target}",
                              str(src)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    top = {n for n in os.listdir(target) if not n.endswith(".dist-info")}
    assert top == {"entangle", "bin"}, top   # no generic top-level 'flags' or 'experiments'
    assert os.path.exists(target / "entangle" / "flags" / "smoke.cfg")

    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [str(target / "bin" / "entangle"), "table1", "--flagfile=smoke.cfg",
         f"--workdir={away / 'work'}", "--epochs=1", "--rows=standard,robust",
         "--columns=0,1/2", "--robustify_steps=4", "--eval_attack_steps=2",
         "--train_attack_steps=1", "--quiet"],
        cwd=away, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| robust (eps 0.5) |" in proc.stdout
    assert glob.glob(str(away / "work" / "results" / "table1-*" / "table.md"))
    where = subprocess.run([sys.executable, "-c", "import entangle; print(entangle.__file__)"],
                           cwd=away, capture_output=True, text=True, env=env)
    assert where.stdout.strip().startswith(str(target))   # the installed copy ran


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_imports_go_one_way_experiments_flags_library():
    """experiments -> flags -> the library: no module imports a layer above its own."""
    layer = lambda mod: (2 if mod.startswith("entangle.experiments") else
                         1 if mod.startswith("entangle.flags") else 0)
    for path in glob.glob(os.path.join(ROOT, "entangle", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        if rel in ("entangle.cli", "entangle.__main__"):
            continue   # the command dispatches to the binaries
        for target in _imports(path):
            if target.startswith("entangle"):
                assert layer(target) <= layer(rel), f"{rel} imports {target}"

"""Installed use: a non-editable install holds only the ``entangle`` package (flagfiles
inside) and runs the smoke table through the ``entangle`` command from any directory; the
library never imports the layers above it."""

import ast
import configparser
import glob
import re
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT



@pytest.mark.slow
def test_a_non_editable_install_runs_the_smoke_table_from_any_directory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
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


def test_constraints_pin_every_requirement_inside_its_tested_range():
    """constraints.txt (what CI installs with) pins each requirement, the test extra's too, to
    a version that setup.cfg's bounds admit; every bound has an upper end; the license the
    metadata names is there."""
    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = (cfg["options"]["install_requires"] + cfg["options.extras_require"]["test"])
    requirements = [Requirement(t) for t in lines.splitlines() if t.strip()]

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()
    pins = {}
    for line in open(os.path.join(ROOT, "constraints.txt")):
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[norm(name)] = version
    for r in requirements:
        assert norm(r.name) in pins, f"{r.name} is not pinned in constraints.txt"
        assert r.specifier.contains(pins[norm(r.name)]), (r, pins[norm(r.name)])
        assert any(s.operator == "<" for s in r.specifier), f"{r} has no upper bound"
    assert "-c constraints.txt" in open(os.path.join(ROOT, ".ci", "run")).read()
    assert cfg["metadata"]["license"] == "Apache-2.0"
    assert open(os.path.join(ROOT, "LICENSE")).read().lstrip().startswith("Apache License")


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


# The layers, top to bottom: a module may import its own layer and those below it; stats
# imports nothing else of the package.
LAYERS = ("experiments", "flags|report", "studies", "store", "core", "data", "runtime")


def layer_of(module: str) -> str | None:
    """The layer of an entangle module ('entangle.core.attacks' -> 'core'), or None for the
    package root (__init__, the cli) and for modules outside entangle."""
    parts = module.split(".")
    if parts[0] != "entangle" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ("experiments", "flags", "report", "studies", "store", "core",
                                    "data", "runtime", "stats") else None


def _rank(layer: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if layer in names.split("|"))


def layer_violations(root: str) -> list[str]:
    """Every import of a module above its own layer, every import by stats of another layer,
    and every import cycle between modules."""
    bad, graph = [], {}
    for path in glob.glob(os.path.join(root, "entangle", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        mine = layer_of(rel)
        graph[rel] = set()
        for target in _imports(path):
            theirs = layer_of(target)
            if theirs is None or mine is None:
                continue
            mod = _module_of(target, root)
            if mod and mod != rel:
                graph[rel].add(mod)
            if mine == "stats" and theirs != "stats":
                bad.append(f"{rel} (stats) imports {target}")
            elif theirs == "stats" or mine == theirs:
                continue
            elif _rank(theirs) < _rank(mine) or (mine in ("flags", "report") and
                                                 theirs in ("flags", "report")):
                bad.append(f"{rel} ({mine}) imports {target} ({theirs})")
    bad += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return bad


def _module_of(target: str, root: str) -> str | None:
    """The entangle module an import names ('entangle.core.train.TrainConfig' ->
    'entangle.core.train')."""
    parts = target.split(".")
    for n in range(len(parts), 1, -1):
        base = os.path.join(root, *parts[:n])
        if os.path.exists(base + ".py") or os.path.exists(os.path.join(base, "__init__.py")):
            return ".".join(parts[:n])
    return None


def _cycles(graph: dict) -> list[list[str]]:
    """Import cycles (each once, as the path that closes it), by depth-first search."""
    found, state = [], {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt in graph and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
    return found


def test_imports_run_one_way_down_the_layers_without_cycles():
    """experiments -> {flags, report} -> studies -> store -> core -> data -> runtime; stats
    depends on nothing else in the package; no module imports a layer above its own and no
    two modules import each other, directly or around a loop."""
    assert layer_violations(ROOT) == []


def test_the_layer_check_catches_an_upward_import_and_a_cycle(tmp_path):
    shutil.copytree(os.path.join(ROOT, "entangle"), tmp_path / "entangle",
                    ignore=shutil.ignore_patterns("__pycache__", "resources"))
    with open(tmp_path / "entangle" / "core" / "models.py", "a") as f:
        f.write("\nfrom entangle.studies import pipeline  # noqa\n")
    with open(tmp_path / "entangle" / "stats" / "paper.py", "a") as f:
        f.write("\nfrom entangle.stats import findings  # noqa\n")
    bad = layer_violations(str(tmp_path))
    assert any("entangle.core.models (core) imports entangle.studies" in b for b in bad)
    assert any(b.startswith("import cycle") and "entangle.stats.paper" in b for b in bad)

"""The front door stays true: every relative link in README.md and docs/ resolves (files and
section anchors), every repository path, test and module they name exists, every command in
README.md's fenced blocks names an existing binary, flagfile, flag and script, its Python
example uses names the library has, and no library module outgrows the size a reader can
hold."""

import configparser
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT

DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: str) -> set:
    text = FENCE.sub("", open(path, encoding="utf-8").read())
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(doc):
    text = FENCE.sub("", open(doc, encoding="utf-8").read())
    links = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    for target in links:
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        assert os.path.exists(full), f"{os.path.relpath(doc, ROOT)}: {target} does not exist"
        assert os.path.realpath(full).startswith(ROOT), f"{target} leaves the repository"
        if anchor:
            assert anchor in _anchors(full), f"{os.path.relpath(doc, ROOT)}: no section #{anchor}"


# a file a tool writes, named in the docs as where to look after running it
WRITTEN = {"benchmarks/results/gpu_check.md": "benchmarks/gpu_check.sh"}
REPO_PATH = re.compile(r"(?<![\w/~.$<-])((?:entangle|tests|benchmarks|flags|experiments|docs)/"
                       r"[\w/.-]+\.(?:py|cfg|sh|json|md|png|txt))(?:::(\w+))?")
MODULE_NAME = re.compile(r"(?<![\w/.])entangle((?:\.\w+)+)")


def _defines(path: str, name: str) -> bool:
    """Whether a module's source defines or imports ``name`` at some level."""
    text = open(path, encoding="utf-8").read()
    return bool(re.search(rf"^\s*(?:def|class)\s+{name}\b|^\s*{name}\s*[:=]|"
                          rf"^\s*(?:from\s+\S+\s+)?import\s+.*\b{name}\b", text, re.M))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_repository_path_test_and_module_the_docs_name_exists(doc):
    """A module moved or a test renamed leaves no stale name in the docs: each repository path
    exists (or a tool writes it), each ``tests/f.py::test`` is a test of f, and each
    ``entangle.a.b`` is a module, or a name that its module defines."""
    text = open(doc, encoding="utf-8").read()
    where = os.path.relpath(doc, ROOT)
    for path, test in REPO_PATH.findall(text):
        if path in WRITTEN:
            assert os.path.exists(os.path.join(ROOT, WRITTEN[path])), path
            continue
        assert os.path.exists(os.path.join(ROOT, path)), f"{where}: {path} does not exist"
        if test:
            assert _defines(os.path.join(ROOT, path), test), f"{where}: no {path}::{test}"
    for dotted in MODULE_NAME.findall(text):
        parts, folder = dotted[1:].split("."), os.path.join(ROOT, "entangle")
        while parts and os.path.isdir(os.path.join(folder, parts[0])):
            folder = os.path.join(folder, parts.pop(0))
        module = (os.path.join(folder, parts.pop(0) + ".py")
                  if parts and os.path.exists(os.path.join(folder, parts[0] + ".py"))
                  else os.path.join(folder, "__init__.py"))
        assert os.path.exists(module) and len(parts) <= 1, f"{where}: no module entangle{dotted}"
        if parts:
            assert _defines(module, parts[0]), f"{where}: {module} has no {parts[0]}"


def _readme_blocks(lang):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return [body for tag, body in FENCE.findall(text) if tag == lang]


def _commands():
    for block in _readme_blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for command in filter(None, (c.strip() for c in line.split("&&"))):
                yield shlex.split(command)


def test_readme_commands_name_existing_binaries_flagfiles_flags_and_scripts():
    from absl import flags

    from entangle import flags as entangle_flags

    fv = flags.FlagValues()
    entangle_flags.define_all(fv)
    commands = list(_commands())
    assert ["python", "-m", "pytest", "-q"] in commands           # the README's test command
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "python -m pytest -q" in ci                             # is what CI runs
    binaries = 0
    for argv in commands:
        if argv[:2] == ["python", "-m"] and argv[2].startswith("experiments."):
            name = argv[2].split(".", 1)[1]
            assert os.path.exists(os.path.join(ROOT, "entangle", "experiments", name + ".py")), argv
            assert os.path.exists(os.path.join(ROOT, "experiments", name + ".py")), argv
            binaries += 1
            for arg in argv[3:]:
                flag = arg.lstrip("-").split("=")[0]
                assert flag in fv or flag == "flagfile" or (flag.startswith("no") and flag[2:] in fv), \
                    f"{' '.join(argv)}: no flag --{flag}"
                if flag == "flagfile":
                    assert os.path.exists(os.path.join(ROOT, arg.split("=", 1)[1])), arg
        elif argv[0] in ("python", "bash") and argv[1].startswith("benchmarks/"):
            assert os.path.exists(os.path.join(ROOT, argv[1])), argv
        elif argv[:2] == ["pip", "install"]:
            extra = re.search(r"\[(\w+)\]", argv[-1]).group(1)
            assert re.search(rf"^{extra}\s*=", open(os.path.join(ROOT, "setup.cfg")).read(),
                             re.M), f"no extra [{extra}] in setup.cfg"
        else:
            assert argv[:3] == ["python", "-m", "pytest"], f"unchecked command: {argv}"
    assert binaries >= 5


_COLLECT = """
import json
import pytest

class Report:
    def pytest_collection_finish(self, session):
        self.items = [(i.nodeid, i.get_closest_marker("slow") is not None,
                       sorted(getattr(i, "fixturenames", ()))) for i in session.items]

report = Report()
code = pytest.main(["--collect-only", "-q", "-p", "no:xdist", "-o", "addopts=", "tests"],
                   plugins=[report])
print(json.dumps({"code": int(code), "items": report.items}))
"""


def test_the_quick_loop_deselects_every_end_to_end_store():
    """``-m "not slow"`` (the README's loop while developing) leaves out every test that uses
    a shared end-to-end store, so it builds none of them; CI's command keeps them all."""
    from conftest import ENV, SLOW_FIXTURES

    proc = subprocess.run([sys.executable, "-c", _COLLECT], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, proc.stderr[-2000:]
    for fixture in SLOW_FIXTURES:
        users = [(node, slow) for node, slow, used in out["items"] if fixture in used]
        assert users, f"no test uses {fixture}"
        assert all(slow for _, slow in users), f"{fixture} users not marked slow: {users}"
    slow = sum(s for _, s, _ in out["items"])
    assert 0 < slow < len(out["items"]) / 4          # a quick loop, not an empty one
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert 'python -m pytest -q -m "not slow"' in readme
    ini = configparser.ConfigParser()
    ini.read(os.path.join(ROOT, "setup.cfg"))
    assert "-m" not in ini["tool:pytest"]["addopts"].split()   # the test command runs all


def test_readme_python_example_runs_as_written(capsys):
    """The README's library block, executed exactly as printed there (it makes its own
    random data): train a user's Keras model adversarially, attack it, robustify."""
    (block,) = _readme_blocks("python")
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()[-1].split()   # after training's progress
    assert len(printed) == 2 and all(0 <= float(v) <= 1 for v in printed)


def test_readme_is_a_front_page_and_modules_stay_readable():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    lines = readme.count("\n")
    assert lines <= 250, f"README.md has {lines} lines; details belong in docs/"
    for page in ("results", "choices", "architecture", "performance"):
        assert f"](docs/{page}.md" in readme, f"README.md does not link docs/{page}.md"
    sizes = {os.path.relpath(p, ROOT): sum(1 for _ in open(p))
             for p in glob.glob(os.path.join(ROOT, "entangle", "**", "*.py"), recursive=True)}
    assert not {p: n for p, n in sizes.items() if n > 470}


def test_api_reference_builds_from_the_docstrings(tmp_path):
    """docs/build_api.py renders every library layer; the attack page carries pgd's signature
    with its bounds and preprocess arguments, so a reader sees what the code takes."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_api",
                                                  os.path.join(ROOT, "docs", "build_api.py"))
    build_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_api)
    build_api.build(str(tmp_path))
    assert (tmp_path / "index.html").exists()
    for module in build_api.MODULES:
        assert (tmp_path / (module.replace(".", "/") + ".html")).exists(), module
    page = (tmp_path / "entangle" / "core" / "attacks.html").read_text()
    section = page[page.index('<section id="pgd">'):]
    signature = section[section.index('class="signature'):section.index("view-source-button")]
    params = re.sub(r"<[^>]+>", "", signature)
    assert "bounds" in params and "preprocess" in params and "eps" in params, params[:300]

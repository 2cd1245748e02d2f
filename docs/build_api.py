"""Builds the API reference of entangle's library layers (HTML from the docstrings, with pdoc)
into docs/api/, or the folder given: ``python docs/build_api.py [OUT]``. Offline; the
binaries (entangle.experiments) and the flags are left out: they are commands, not an API."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("entangle.core", "entangle.data", "entangle.store", "entangle.studies",
           "entangle.stats", "entangle.report", "entangle.runtime")


def build(out: str) -> None:
    """Writes ``out/index.html`` and one page per module of ``MODULES``."""
    env = {**os.environ, "PDOC_ALLOW_EXEC": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-m", "pdoc", "--docformat", "restructuredtext",
                    "-o", out, *MODULES], cwd=ROOT, env=env, check=True)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "api")
    build(target)
    print(f"API reference: {os.path.join(target, 'index.html')}")

#!/usr/bin/env bash
# Installs the peer attack libraries into a benchmark-only venv that also sees every package of
# the interpreter running this script (an active virtual environment included, with the
# project's editable install), then runs benchmarks/pgd.py with any extra arguments.
#   BENCH_VENV=DIR         where the benchmark venv lives (default benchmarks/.venv)
#   BENCH_SKIP_INSTALL=1   do not pip-install ART and foolbox (offline; they are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${BENCH_VENV:-benchmarks/.venv}
if [ ! -x "$venv/bin/python" ]; then
  python -m venv ${BENCH_SKIP_INSTALL:+--without-pip} "$venv"
  # `venv --system-site-packages` would inherit the base interpreter's packages, not an active
  # venv's: point the new venv at this interpreter's site directories instead (.pth files in
  # them, such as an editable install's, are processed too)
  python - "$venv" <<'PY'
import glob, os, site, sys, sysconfig
site_dir = glob.glob(os.path.join(sys.argv[1], "lib", "python*", "site-packages"))[0]
parents = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
           *site.getsitepackages()]
parents = [p for i, p in enumerate(parents) if p not in parents[:i] and os.path.isdir(p)]
with open(os.path.join(site_dir, "_entangle_parent.pth"), "w") as f:
    f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
PY
  if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
    "$venv/bin/pip" install -q -r benchmarks/requirements.txt
  fi
fi
exec "$venv/bin/python" benchmarks/pgd.py "$@"

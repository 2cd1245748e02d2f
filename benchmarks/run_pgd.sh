#!/usr/bin/env bash
# Installs the peer attack libraries into a benchmark-only venv (inheriting the project's
# TensorFlow), then runs benchmarks/pgd.py with any extra arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/.venv
if [ ! -x "$venv/bin/python" ]; then
  python -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q -r benchmarks/requirements.txt
fi
exec "$venv/bin/python" benchmarks/pgd.py "$@"

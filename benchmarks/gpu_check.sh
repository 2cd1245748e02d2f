#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): paper path slices under float32 and mixed_float16,
# with and without XLA, over MirroredStrategy, and the paper-scale projections of Tables 1
# and 5, written to one Markdown report (default benchmarks/results/gpu_check.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec python benchmarks/gpu_check.py "$@"

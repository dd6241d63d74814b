#!/usr/bin/env bash
# The prepared GPU check in one command (CUDA tests, short bench, small claims run), at most 9 minutes,
# at most 8 files in OUT. Usage:
#   scripts/gpu_check.sh OUT [DATA_ROOT | --cifar-parts DIR DIR DIR] [--budget SECONDS]
#   scripts/gpu_check.sh OUT --rehearse          # CPU, tiny settings: tests this script (CI runs it)
# On a machine whose Python already has torch (CUDA) and the dependencies; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_check.sh OUT [DATA_ROOT | --cifar-parts DIR...] [--budget S] [--rehearse]}
shift
args=()
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then args+=(--data-root "$1"); shift; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no install: the GPU image brings torch and the rest
exec python -m lth_checks.cli device-check --out "$out" "${args[@]}" "$@"

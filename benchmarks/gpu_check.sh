#!/usr/bin/env bash
# The prepared GPU check (see gpu_check.py): bash benchmarks/gpu_check.sh --out gpu_check.json [--smoke]
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_check.py" "$@"

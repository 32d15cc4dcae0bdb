#!/bin/bash
# make bench: side-by-side measurements; writes docs/BENCHMARKS.md's generated section.
set -euo pipefail
BIN=$(realpath "${1:-build/safetensorsfs}")
exec "${PYTHON:-.venv/bin/python}" scripts/bench/bench.py --bin "$BIN" "${@:2}"

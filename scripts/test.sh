#!/usr/bin/env bash
# The full test suite: install, pytest (warnings are errors), ruff, mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYBAMM_DISABLE_TELEMETRY=true
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
python -m ruff check .
python -m ruff format --check .
python -m mypy
python -m pytest

#!/usr/bin/env bash
# The full test suite: install, pytest (warnings are errors), ruff, mypy.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYBAMM_DISABLE_TELEMETRY=true
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
# The dashboard's browser tests drive Debian's Chromium (Playwright downloads no browser).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq chromium >/dev/null 2>&1 \
        || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) \
        || echo "could not install chromium: the dashboard's browser tests will not run" >&2
fi
python -m ruff check .
python -m ruff format --check .
python -m mypy
python -m pytest

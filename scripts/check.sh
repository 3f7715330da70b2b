#!/usr/bin/env bash
# Lint, format and types, as CI runs them before the tests (README's test command; .pre-commit-config.yaml runs
# the same tools). Fix what ruff can with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

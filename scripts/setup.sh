#!/usr/bin/env bash
# Sets up .venv from the lock file; a no-op when the lock and pyproject have not changed since the last run.
# Needs only python3 (3.11+) with venv and pip. pip's output goes to .venv/setup.log (shown on failure).
#   --test   also installs what the integration tests use from Debian (promtool, from the prometheus
#            package) when it is missing and apt-get is usable; without it those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--test" ] && ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's prometheus (promtool) for the rule tests…" >&2
    mkdir -p .venv
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
      >.venv/apt.log 2>&1 || { echo "apt-get failed (see .venv/apt.log); promtool tests will be skipped" >&2; }
  else
    echo "promtool not found and apt-get not usable as root: promtool tests will be skipped" >&2
  fi
fi

stamp=.venv/.sregraph-setup
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/setup.log
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@" >>"$log" 2>&1 || { cat "$log"; exit 1; }; }
: >"$log"
echo "setting up .venv from requirements.lock (first run takes a minute or two)…" >&2
pip install -r requirements.lock
pip install --no-deps -e .
echo "$want" >"$stamp"

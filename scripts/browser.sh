#!/usr/bin/env bash
# Installs the headless browser tests/test_dashboard.py drives: Debian's chromium-headless-shell. Does nothing
# when a headless-capable Chromium is already on PATH. Needs root and apt-get; without them it says what is
# missing and exits 0 (the dashboard test then skips and names this script).
# apt's output goes to $SREGRAPH_APT_LOG (default: .venv/browser-apt.log), shown on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

have_browser() { command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1; }
have_browser && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  mkdir -p .venv
  log=${SREGRAPH_APT_LOG:-.venv/browser-apt.log}
  echo "installing chromium-headless-shell from Debian for the dashboard test…" >&2
  if ! { apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "apt-get failed (full log: $log); the dashboard test will be skipped" >&2
  fi
else
  echo "chromium-headless-shell not found and apt-get is not usable as root: the dashboard test will be skipped" >&2
fi
have_browser || echo "still missing: chromium-headless-shell" >&2
exit 0

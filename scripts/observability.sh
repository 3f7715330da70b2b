#!/usr/bin/env bash
# Installs the servers tests/test_prometheus_integration.py runs, from Debian: prometheus (with promtool) and
# prometheus-alertmanager. Does nothing when both are already on PATH. Needs root and apt-get; without them it
# says what is missing and exits 0 (the integration test then skips and names what to install).
#   --strict   exit 1 instead of 0 when a binary is still missing afterwards
# apt's output goes to $SREGRAPH_APT_LOG (default: .venv/observability-apt.log), shown on failure.
# On a host booted with systemd, the packages also start their default daemons (:9090, :9093); the tests
# never use those, they start their own on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

strict=0
[ "${1:-}" = "--strict" ] && strict=1

have_prometheus() { command -v prometheus >/dev/null 2>&1; }
have_alertmanager() { command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1; }

missing=()
have_prometheus || missing+=(prometheus)
have_alertmanager || missing+=(prometheus-alertmanager)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  mkdir -p .venv
  log=${SREGRAPH_APT_LOG:-.venv/observability-apt.log}
  echo "installing ${missing[*]} from Debian for the Prometheus integration test…" >&2
  if ! { apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "apt-get failed (full log: $log); the Prometheus integration test will be skipped" >&2
  fi
else
  echo "${missing[*]} not found and apt-get is not usable as root: the Prometheus integration test will be skipped" >&2
fi

still=()
have_prometheus || still+=(prometheus)
have_alertmanager || still+=(prometheus-alertmanager)
if [ ${#still[@]} -ne 0 ]; then
  echo "still missing: ${still[*]}" >&2
  [ "$strict" = 1 ] && exit 1
fi
exit 0

#!/usr/bin/env bash
# A throwaway local PostgreSQL for the Postgres tests, the scale-out benchmark and the demo (docs/scale-out.md).
#   install          apt-get install postgresql when no server binary is found (needs root; otherwise says so)
#   start DIR        initdb DIR (if new) and start a server on a unix socket in DIR and on 127.0.0.1:$PGPORT
#                    (a free port when unset); prints `dsn=...` (no password) and `port=...`. Local connections
#                    are trusted; TCP ones need the password in $SREGRAPH_PG_TEST_PASSWORD (default: generated,
#                    written to DIR/password, mode 600).
#   stop DIR         stop that server (fast shutdown) and wait for it
# The server never runs as root (postgres refuses to): when started as root it runs as $SREGRAPH_PG_USER
# (default: Debian's `postgres` user), which owns DIR. Nothing is written outside DIR; `rm -rf DIR` after
# `stop` leaves nothing behind.
set -euo pipefail

bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null 2>&1 && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}

as_owner() {
  if [ "$(id -u)" = "0" ]; then
    runuser -u "${SREGRAPH_PG_USER:-postgres}" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

cmd=${1:-}
case "$cmd" in
  install)
    bindir >/dev/null && exit 0
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      log=${SREGRAPH_APT_LOG:-/tmp/sregraph-postgres-apt.log}
      echo "installing postgresql from Debian for the Postgres tests…" >&2
      if ! { apt-get update -qq &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "apt-get failed (full log: $log); the Postgres tests will be skipped" >&2
      fi
    else
      echo "postgresql not found and apt-get is not usable as root: the Postgres tests will be skipped" >&2
    fi
    exit 0
    ;;
  start)
    dir=${2:?usage: postgres.sh start DIR}
    bin=$(bindir) || { echo "no PostgreSQL server found (bash scripts/postgres.sh install)" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = "0" ]; then
      chown "${SREGRAPH_PG_USER:-postgres}" "$dir"
      chmod 700 "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      password=${SREGRAPH_PG_TEST_PASSWORD:-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
      umask 077
      printf '%s\n' "$password" >"$dir/password"
      [ "$(id -u)" = "0" ] && chown "${SREGRAPH_PG_USER:-postgres}" "$dir/password"
      as_owner "$bin/initdb" -D "$dir/data" -U sregraph --pwfile="$dir/password" --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port=${PGPORT:-$(free_port)}
    # fsync off: a test server that loses its data on a power cut loses nothing anyone needs, and every commit
    # would otherwise wait for the disk.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
      "-k $dir -h 127.0.0.1 -p $port -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      >/dev/null || { tail -n 30 "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h "$dir" -p "$port" -U sregraph sregraph 2>/dev/null || true
    echo "dsn=host=$dir port=$port user=sregraph dbname=sregraph"
    echo "port=$port"
    ;;
  stop)
    dir=${2:?usage: postgres.sh stop DIR}
    bin=$(bindir) || exit 0
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    ;;
  *)
    echo "usage: postgres.sh install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# A private container engine serving the Docker Engine API on a unix socket (podman 4.3 + runc, from Debian),
# and the local app's image `localhost/sregraph-app:latest`. Idempotent: every mode may be run again.
#
#   scripts/container-engine.sh start   install what is missing, start the engine, build/import the image,
#                                       and print the socket path (the only line on stdout)
#   scripts/container-engine.sh image   build/import the image only
#   scripts/container-engine.sh status  print the socket path and exit 0 if the engine answers, else exit 1
#   scripts/container-engine.sh stop    stop every container of this engine, then the engine
#   scripts/container-engine.sh reset   stop, then delete the engine's storage (the image cache is kept)
#
# Environment: SREGRAPH_ENGINE_DIR (default .sregraph/engine: containers.conf, storage/, run/, tmp/, the
# socket, pid and log); SREGRAPH_CACHE_DIR (default ~/.cache/sregraph, outside the work tree because CI runs in
# a fresh clone: the image's root filesystem tarball); PYTHON (the project's interpreter, default .venv/bin/python
# else python3: its installed packages decide what goes into the image, and its pip installs them).
#
# The image: `mmdebstrap --variant=minbase --include=python3 bookworm` (Debian's Python 3.11), plus the Python
# distributions the services import (found from the module-level imports of sregraph.localenv.service and the
# project modules it imports, with their requirements), pip-installed with --no-deps into the image's
# /usr/local/lib/python3.11/dist-packages at exactly the versions $PYTHON has. Debian's own packages are not
# used for them: bookworm's pydantic is 1.x and the code needs 2.x. The project's code is not in the image:
# the runtime bind-mounts the repository read-only, so the image changes only when those pins or this recipe
# do. The tarball is cached under a key of both; a warm run finds the image (instant) or imports it (seconds).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-start}
ENGINE_DIR=${SREGRAPH_ENGINE_DIR:-$ROOT/.sregraph/engine}
CACHE_DIR=${SREGRAPH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sregraph}
PY=${PYTHON:-}
[ -n "$PY" ] || { [ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python; } || PY=python3
IMAGE=localhost/sregraph-app:latest
SUITE=bookworm
RECIPE=3  # bump when the build below changes in a way the pins do not show
SOCK=$ENGINE_DIR/podman.sock
PIDFILE=$ENGINE_DIR/podman.pid
START_TIMEOUT_S=30

log() { echo "container-engine: $*" >&2; }
die() { log "$*"; exit 1; }
podman_() { CONTAINERS_CONF=$ENGINE_DIR/containers.conf podman --root "$ENGINE_DIR/storage" --runroot "$ENGINE_DIR/run" "$@"; }

install_missing() {
  local want=()
  command -v podman >/dev/null 2>&1 || want+=(podman)
  command -v runc >/dev/null 2>&1 || want+=(runc)
  [ "${1:-}" = "build" ] && ! command -v mmdebstrap >/dev/null 2>&1 && want+=(mmdebstrap)
  [ ${#want[@]} -eq 0 ] && return 0
  [ "$(id -u)" = "0" ] || die "${want[*]} missing and not root: cannot apt-get install them"
  command -v apt-get >/dev/null 2>&1 || die "${want[*]} missing and no apt-get to install them"
  log "installing ${want[*]} from Debian (log: $ENGINE_DIR/apt.log)…"
  mkdir -p "$ENGINE_DIR"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"; } \
    >"$ENGINE_DIR/apt.log" 2>&1 || die "apt-get install ${want[*]} failed; see $ENGINE_DIR/apt.log"
}

write_conf() {
  mkdir -p "$ENGINE_DIR/storage" "$ENGINE_DIR/run" "$ENGINE_DIR/tmp"
  # nofile/nproc: root here lacks CAP_SYS_RESOURCE for podman's defaults; netns none: containers use the
  # host's network (the services listen on loopback ports); runc: crun fails on hybrid cgroups; tmp_dir: keep
  # this engine's transient state (exit files, events, locks) apart from any other podman on the machine.
  cat >"$ENGINE_DIR/containers.conf.tmp" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$ENGINE_DIR/tmp"
hooks_dir = ["$ENGINE_DIR/hooks.d"]
EOF
  mv "$ENGINE_DIR/containers.conf.tmp" "$ENGINE_DIR/containers.conf"
  write_oom_hook
}

# Podman 4.3 learns that the kernel OOM-killed a container from a file `oom` that conmon writes in its
# working directory, which on cgroup v1 is podman's own, not the container's bundle where podman looks: so
# State.OOMKilled stays false. This OCI hook does conmon's job: at container start it leaves behind a watcher
# that waits on the container's memory cgroup OOM notification (cgroup.event_control) and writes the bundle's
# `oom` file when the kernel kills in it; the watcher exits with the cgroup. On cgroup v2 it does nothing.
write_oom_hook() {
  local hook_py
  hook_py=$(command -v python3 || true)
  [ -x /usr/bin/python3 ] && hook_py=/usr/bin/python3
  mkdir -p "$ENGINE_DIR/hooks.d"
  if [ -z "$hook_py" ]; then rm -f "$ENGINE_DIR/hooks.d/oom-watch.json"; return 0; fi
  cat >"$ENGINE_DIR/oom-watch.py" <<'PYEOF'
import json, os, sys

state = json.load(sys.stdin)
memory = None
try:
    with open(f"/proc/{state['pid']}/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                memory = "/sys/fs/cgroup/memory" + path
except (OSError, KeyError, ValueError):
    sys.exit(0)
marker = os.path.join(state["bundle"], "oom")
if os.path.exists(marker):
    os.unlink(marker)  # left by an earlier run of this container (a start after a stop)
if memory is None or not os.path.exists(memory + "/cgroup.event_control"):
    sys.exit(0)
if os.fork():
    sys.exit(0)  # the hook returns at once; the child watches
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
event = os.eventfd(0)
control = os.open(memory + "/memory.oom_control", os.O_RDONLY)
with open(memory + "/cgroup.event_control", "w") as fh:
    fh.write(f"{event} {control}")
while True:
    count = os.eventfd_read(event)  # an OOM in the cgroup, or the cgroup's removal
    gone = not os.path.exists(memory + "/cgroup.event_control")
    if not gone or count > 1:
        open(marker, "a").close()
    if gone:
        break
PYEOF
  cat >"$ENGINE_DIR/hooks.d/oom-watch.json.tmp" <<EOF
{"version": "1.0.0", "hook": {"path": "$hook_py", "args": ["python3", "$ENGINE_DIR/oom-watch.py"]},
 "when": {"always": true}, "stages": ["poststart"]}
EOF
  mv "$ENGINE_DIR/hooks.d/oom-watch.json.tmp" "$ENGINE_DIR/hooks.d/oom-watch.json"
}

ping() {
  [ -S "$SOCK" ] || return 1
  "$PY" - "$SOCK" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
sys.exit(0 if b" 200 " in s.recv(64) else 1)
EOF
}

service_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "podman" ] && echo "$pid"
}

start_engine() {
  install_missing
  write_conf
  # run/ and tmp/ describe running containers; after a reboot they lie, so start them afresh.
  local boot
  boot=$(cat /proc/sys/kernel/random/boot_id)
  if [ "$(cat "$ENGINE_DIR/boot_id" 2>/dev/null)" != "$boot" ]; then
    rm -rf "$ENGINE_DIR/run" "$ENGINE_DIR/tmp"
    mkdir -p "$ENGINE_DIR/run" "$ENGINE_DIR/tmp"
    echo "$boot" >"$ENGINE_DIR/boot_id"
  fi
  local pid conf
  conf=$(sha256sum <"$ENGINE_DIR/containers.conf" | cut -c1-16)
  if pid=$(service_pid); then
    if [ "$(cat "$ENGINE_DIR/podman.conf-sha" 2>/dev/null)" = "$conf" ] && ping; then
      return 0
    fi
    # Its containers keep running (conmon holds them); the new service adopts them.
    log "engine (pid $pid) does not answer or its containers.conf changed; restarting it"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -e /proc/"$pid" ] || break; sleep 0.1; done
  fi
  rm -f "$SOCK"
  # Its own session, so it outlives the caller; its working directory is ENGINE_DIR (conmon writes there).
  (cd "$ENGINE_DIR" && CONTAINERS_CONF=$ENGINE_DIR/containers.conf exec setsid podman --root "$ENGINE_DIR/storage" \
    --runroot "$ENGINE_DIR/run" system service --time=0 "unix://$SOCK" </dev/null >"$ENGINE_DIR/service.log" 2>&1 9>&-) &
  echo $! >"$PIDFILE"
  echo "$conf" >"$ENGINE_DIR/podman.conf-sha"
  local waited=0
  until ping; do
    if ! service_pid >/dev/null; then
      die "podman system service exited: $(tail -n 5 "$ENGINE_DIR/service.log" | tr '\n' ' ')"
    fi
    [ $waited -ge $((START_TIMEOUT_S * 10)) ] && die "no answer on $SOCK after ${START_TIMEOUT_S}s; see $ENGINE_DIR/service.log"
    sleep 0.1
    waited=$((waited + 1))
  done
  log "engine up on $SOCK (pid $(cat "$PIDFILE"))"
}

stop_engine() {
  local pid
  if pid=$(service_pid); then
    if [ -f "$ENGINE_DIR/containers.conf" ]; then podman_ stop --all --time 2 >/dev/null 2>&1 || true; fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -e /proc/"$pid" ] || break; sleep 0.1; done
    log "engine stopped"
  fi
  rm -f "$PIDFILE" "$SOCK"
}

reset_engine() {
  stop_engine
  if [ -d "$ENGINE_DIR/storage" ] && [ -f "$ENGINE_DIR/containers.conf" ]; then
    podman_ rm --all --force --time 2 >/dev/null 2>&1 || true
    podman_ system reset --force >/dev/null 2>&1 || true
  fi
  # Anything still mounted under the engine's directory would make rm fail half-way.
  awk -v d="$ENGINE_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
  rm -rf "$ENGINE_DIR"
  log "engine storage removed ($ENGINE_DIR)"
}

# Prints `name==version` for every Python distribution the services need, at the versions $PY has installed:
# the module-level imports of sregraph.localenv.service and of the project modules it imports, mapped to the
# distributions providing them, then those distributions' requirements (markers evaluated for $PY).
service_pins() {
  "$PY" - "$ROOT" <<'PYEOF'
import ast, importlib.metadata as md, re, sys
from pathlib import Path

root = Path(sys.argv[1])


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def module_file(mod):
    base = root.joinpath(*mod.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(tree):
    """Imports run when the module is imported (its body, try and if blocks), not under TYPE_CHECKING."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


external, seen, todo = set(), set(), ["sregraph.localenv.service"]
while todo:
    mod = todo.pop()
    path = module_file(mod)
    if mod in seen or path is None:
        continue
    seen.add(mod)
    parts = mod.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages' __init__ run first
    for name in imports(ast.parse(path.read_text())):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if module_file(top) is not None:
            todo.append(name)
        else:
            external.add(name)

providers = md.packages_distributions()
wanted = set()
for name in sorted(external):
    parts = name.split(".")
    dists = providers.get(parts[0], [])
    if not dists:
        sys.exit(f"{parts[0]} is imported by the services but not installed for {sys.executable}")
    if len(dists) > 1:  # a namespace package (opentelemetry): only the distribution holding this very module
        hit = []
        for n in range(len(parts), 1, -1):
            prefix = "/".join(parts[:n])
            hit = [d for d in dists
                   if any(str(f) == prefix + ".py" or str(f).startswith(prefix + "/") for f in md.distribution(d).files or [])]
            if hit:
                break
        dists = hit  # the bare namespace itself (`from opentelemetry import x`) names no distribution
    wanted.update(norm(d) for d in dists)

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
pins, todo = {}, sorted(wanted)
while todo:
    dist = todo.pop()
    if dist in pins:
        continue
    try:
        pins[dist] = md.version(dist)
    except md.PackageNotFoundError:
        sys.exit(f"{dist} is needed by the services but not installed for {sys.executable}")
    for text in md.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(norm(req.name))
print("\n".join(f"{d}=={v}" for d, v in sorted(pins.items())))
PYEOF
}

build_rootfs() {
  local tar=$1 pins=$2 work
  install_missing build
  [ "$(id -u)" = "0" ] || die "building the image's root filesystem needs root (mmdebstrap)"
  work=$(mktemp -d)
  cat >"$work/hook.sh" <<'EOF'
set -eu
root=$1
v=$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hv=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$v" = "$hv" ] || { echo "the image has Python $v but $PY is $hv: pip would pick the wrong wheels" >&2; exit 1; }
"$PY" -m pip install --disable-pip-version-check --quiet --no-warn-script-location --no-deps \
  --target "$root/usr/local/lib/python$v/dist-packages" -r "$PINS"
EOF
  log "building the image's root filesystem (Debian $SUITE, python3, $(wc -l <"$pins") Python distributions; about a minute)…"
  PY=$PY PINS=$pins mmdebstrap --quiet --format=tar --variant=minbase --include=python3 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="sh $work/hook.sh \"\$1\"" \
    "$SUITE" "$tar.tmp" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -n 20 "$work/mmdebstrap.log" >&2; rm -rf "$work" "$tar.tmp"; die "mmdebstrap failed"; }
  rm -rf "$work"
  mv "$tar.tmp" "$tar"
}

ensure_image() {
  mkdir -p "$CACHE_DIR"
  local pins key tar have
  pins=$(mktemp)
  service_pins >"$pins" || { rm -f "$pins"; die "cannot list the services' Python dependencies with $PY"; }
  key=$(printf 'recipe=%s suite=%s\n' "$RECIPE" "$SUITE" | cat - "$pins" | sha256sum | cut -c1-16)
  have=$(podman_ image inspect --format '{{index .Labels "io.sregraph.image-key"}}' "$IMAGE" 2>/dev/null || true)
  if [ "$have" = "$key" ]; then
    rm -f "$pins"
    return 0
  fi
  tar=$CACHE_DIR/sregraph-app-$key.tar
  if [ ! -s "$tar" ]; then
    build_rootfs "$tar" "$pins"
    find "$CACHE_DIR" -maxdepth 1 -name 'sregraph-app-*.tar' ! -name "sregraph-app-$key.tar" -delete
  fi
  rm -f "$pins"
  log "importing $IMAGE from $tar…"
  podman_ import --quiet --change "LABEL=io.sregraph.image-key=$key" --change "ENV=PYTHONUNBUFFERED=1" \
    --change 'CMD=["python3"]' "$tar" "$IMAGE" >/dev/null || die "podman import failed"
  podman_ image prune --force >/dev/null 2>&1 || true  # the previous untagged image, if any
}

# One caller at a time per engine (two test sessions starting it at once would race); outside ENGINE_DIR,
# which reset deletes.
if [ "$MODE" != status ] && command -v flock >/dev/null 2>&1; then
  mkdir -p "$(dirname "$ENGINE_DIR")"
  exec 9>"$ENGINE_DIR.lock"
  flock 9
fi

case "$MODE" in
  start)
    start_engine
    ensure_image
    echo "$SOCK"
    ;;
  image)
    install_missing
    write_conf
    ensure_image
    ;;
  status)
    if service_pid >/dev/null && ping; then echo "$SOCK"; else exit 1; fi
    ;;
  stop) stop_engine ;;
  reset) reset_engine ;;
  *) die "unknown mode $MODE (start, image, status, stop, reset)" ;;
esac

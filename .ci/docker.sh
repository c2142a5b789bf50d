#!/usr/bin/env bash
# A private Docker engine and a local registry for casey-deploy's tests (and for a
# developer by hand). Installs nothing: .ci/setup.sh installs docker.io,
# docker-registry and apache2-utils.
#
#   .ci/docker.sh start   start dockerd + the registry (idempotent), write the env file
#   .ci/docker.sh stop    stop both and remove the state dir (images, registry data)
#   .ci/docker.sh env     print the env file's path (after start)
#
# Then:  source "$(.ci/docker.sh env)"   # DOCKER_HOST, CASEY_TEST_REGISTRY
#
# dockerd runs as root with its own data root, exec root, pid file and socket
# under the state dir, without a bridge or iptables rules (--bridge=none
# --iptables=false --ip-masq=false): this machine may only talk to loopback.
# No image can be pulled here, so test images are `FROM scratch` + COPY.
#
# The registry (CNCF distribution, `docker-registry serve`) listens on
# 127.0.0.1 on a free port with htpasswd (bcrypt) auth for user AWS and
# password 123456789012-auth-token: the fixed token moto's ECR
# GetAuthorizationToken returns, so `casey-deploy image --registry` logs in with
# exactly what the emulated ECR hands out. That password is public test data.
#
# Settings: CASEY_DOCKER_STATE (state dir, default ~/.cache/casey-deploy/docker),
# CASEY_TEST_REGISTRY_PORT (default: a free port).
set -euo pipefail

STATE=${CASEY_DOCKER_STATE:-$HOME/.cache/casey-deploy/docker}
ENV_FILE=$STATE/docker.env
SOCK=$STATE/docker.sock
REGISTRY_USER=AWS
REGISTRY_PASSWORD=123456789012-auth-token

die() { echo "docker.sh: $*" >&2; exit 1; }
say() { echo "docker.sh: $*" >&2; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
  local port
  for port in $(seq 5000 5100) $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port on 127.0.0.1"
}

wait_for() { # SECONDS DESCRIPTION LOG COMMAND...
  local seconds=$1 what=$2 log=$3
  shift 3
  for _ in $(seq $((seconds * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "$what did not come up within ${seconds}s; last lines of $log:"
  tail -n 20 "$log" >&2 || true
  return 1
}

start_dockerd() {
  if alive "$STATE/dockerd.pid" && DOCKER_HOST=unix://$SOCK docker version >/dev/null 2>&1; then
    say "dockerd already running (pid $(cat "$STATE/dockerd.pid"))"
    return
  fi
  command -v dockerd >/dev/null || die "dockerd is not installed: apt-get install -y docker.io (see .ci/setup.sh)"
  [[ $(id -u) == 0 ]] || die "dockerd needs root here; run with sudo"
  mkdir -p "$STATE/data" "$STATE/exec"
  rm -f "$SOCK"
  # setsid: the engine must outlive this script and not get the caller's Ctrl-C.
  setsid dockerd \
    --data-root "$STATE/data" \
    --exec-root "$STATE/exec" \
    --pidfile "$STATE/dockerd.pid" \
    --host "unix://$SOCK" \
    --bridge=none --iptables=false --ip-masq=false \
    --insecure-registry 127.0.0.0/8 \
    >"$STATE/dockerd.log" 2>&1 </dev/null &
  wait_for 60 dockerd "$STATE/dockerd.log" env DOCKER_HOST="unix://$SOCK" docker version \
    || die "dockerd failed to start"
  say "dockerd running (pid $(cat "$STATE/dockerd.pid")), DOCKER_HOST=unix://$SOCK"
}

start_registry() {
  if alive "$STATE/registry.pid" && [[ -f $STATE/registry.port ]]; then
    say "registry already running on 127.0.0.1:$(cat "$STATE/registry.port")"
    return
  fi
  command -v docker-registry >/dev/null || die "docker-registry is not installed: apt-get install -y docker-registry"
  command -v htpasswd >/dev/null || die "htpasswd is not installed: apt-get install -y apache2-utils"
  local port=${CASEY_TEST_REGISTRY_PORT:-$(free_port)}
  mkdir -p "$STATE/registry"
  printf '%s' "$REGISTRY_PASSWORD" | htpasswd -iBc "$STATE/htpasswd" "$REGISTRY_USER" 2>/dev/null
  cat >"$STATE/registry.yml" <<YAML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
auth:
  htpasswd:
    realm: casey-test-registry
    path: $STATE/htpasswd
YAML
  setsid docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 </dev/null &
  echo $! >"$STATE/registry.pid"
  echo "$port" >"$STATE/registry.port"
  # 401 without credentials means it is up and auth is on.
  wait_for 30 "the registry" "$STATE/registry.log" \
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" || die "the registry failed to start"
  say "registry running (pid $(cat "$STATE/registry.pid")) on 127.0.0.1:$port, user $REGISTRY_USER"
}

stop_pid() { # PIDFILE NAME
  local pidfile=$1 name=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) ignored SIGTERM for 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

case ${1:-} in
  start)
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    start_dockerd
    start_registry
    cat >"$ENV_FILE" <<ENV
export DOCKER_HOST=unix://$SOCK
export CASEY_TEST_REGISTRY=127.0.0.1:$(cat "$STATE/registry.port")
ENV
    say "wrote $ENV_FILE; use it with: source $ENV_FILE"
    ;;
  stop)
    stop_pid "$STATE/registry.pid" registry
    stop_pid "$STATE/dockerd.pid" dockerd
    # dockerd normally stops its containerd; a leftover one keeps files busy.
    if [[ -f $STATE/exec/containerd/containerd.pid ]]; then
      stop_pid "$STATE/exec/containerd/containerd.pid" containerd
    fi
    if [[ -d $STATE ]]; then
      # overlay mounts left by a killed engine would make rm fail.
      { grep -o " $STATE/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
      rm -rf "$STATE"
      say "removed $STATE"
    fi
    ;;
  env)
    [[ -f $ENV_FILE ]] || die "not started: run .ci/docker.sh start"
    echo "$ENV_FILE"
    ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac

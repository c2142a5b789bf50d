#!/usr/bin/env bash
# scripts/get-backend-url.sh: the seed's script, kept as a thin wrapper around
# `casey-deploy backend-url`: prints BACKEND_WS_URL=ws://<task ip>:3001/ws per
# running task (or the ALB's URL). Arguments pass through: --json,
# --wait SECONDS, --check.
#
# The binary: $CASEY_DEPLOY_BIN if set, else `casey-deploy` on PATH, else
# `cargo run --release` of this repository.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${CASEY_DEPLOY_BIN:-} ]]; then
  exec "$CASEY_DEPLOY_BIN" --project-dir "$root" backend-url "$@"
elif command -v casey-deploy >/dev/null 2>&1; then
  exec casey-deploy --project-dir "$root" backend-url "$@"
else
  exec cargo run --release --quiet --manifest-path "$root/Cargo.toml" -- --project-dir "$root" backend-url "$@"
fi

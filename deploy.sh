#!/usr/bin/env bash
# ./deploy.sh: the seed's entry point, kept as a thin wrapper around
# `casey-deploy infra` (Terraform with a state refresh, showing the AWS account;
# now one saved plan, confirmed, then applied). Arguments pass through, e.g.
# `./deploy.sh --var enable_alb=true`. `casey-deploy all` also builds, pushes,
# rolls out and prints the backend URL.
#
# The binary: $CASEY_DEPLOY_BIN if set, else `casey-deploy` on PATH, else
# `cargo run --release` of this repository.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n ${CASEY_DEPLOY_BIN:-} ]]; then
  exec "$CASEY_DEPLOY_BIN" --project-dir "$root" infra "$@"
elif command -v casey-deploy >/dev/null 2>&1; then
  exec casey-deploy --project-dir "$root" infra "$@"
else
  exec cargo run --release --quiet --manifest-path "$root/Cargo.toml" -- --project-dir "$root" infra "$@"
fi

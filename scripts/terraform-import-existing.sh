#!/usr/bin/env bash
# scripts/terraform-import-existing.sh: the seed's script, kept as a thin
# wrapper around `casey-deploy import`: imports the stack's resources that
# already exist in AWS (log groups, IAM policies, ...) into the Terraform state.
#
# The binary: $CASEY_DEPLOY_BIN if set, else `casey-deploy` on PATH, else
# `cargo run --release` of this repository.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${CASEY_DEPLOY_BIN:-} ]]; then
  exec "$CASEY_DEPLOY_BIN" --project-dir "$root" import "$@"
elif command -v casey-deploy >/dev/null 2>&1; then
  exec casey-deploy --project-dir "$root" import "$@"
else
  exec cargo run --release --quiet --manifest-path "$root/Cargo.toml" -- --project-dir "$root" import "$@"
fi

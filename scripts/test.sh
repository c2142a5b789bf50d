#!/usr/bin/env bash
# The project's test command: installs what is missing, starts the services
# the tests need (Docker engine + registry on loopback), runs every suite,
# stops what it started, and ends with one "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source .ci/setup.sh

log_dir=$(mktemp -d)
services_started=""
cleanup() {
  [ -n "$services_started" ] && bash .ci/docker.sh stop || true
  rm -rf "$log_dir"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
passed=0; failed=0
count() { # LOG: add cargo's and pytest's totals
  local p f
  # cargo: "test result: ok. 3 passed; 0 failed; ..."; pytest: "=== 2 failed, 8 passed in 1.2s ===" or "8 passed in 1s"
  read -r p f < <(awk '
    /^test result: / { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
    /^=*[ ]*[0-9]+ (passed|failed)/ && / in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
    END { print p + 0, f + 0 }' "$1")
  passed=$((passed + p)); failed=$((failed + f))
}
check() { # NAME CMD...: a static check counts as one test
  step "$1"; shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $*"; fi
}

# Static checks.
check "terraform fmt" terraform fmt -check -recursive terraform
tf_copy="$log_dir/tf"; mkdir -p "$tf_copy"; cp terraform/*.tf terraform/.terraform.lock.hcl "$tf_copy"/
check "terraform validate" bash -c "terraform -chdir='$tf_copy' init -input=false -backend=false >/dev/null && terraform -chdir='$tf_copy' validate"
check "checkov (terraform)" "$CASEY_LINT_BIN/checkov" -d terraform --framework terraform --skip-download --quiet --compact
check "IAM policies (size, parliament)" "$CASEY_LINT_BIN/python" .ci/lint-iam.py
check "checkov (Dockerfile)" "$CASEY_LINT_BIN/checkov" -f backend/Dockerfile --framework dockerfile --skip-download --quiet --compact
check "hadolint" "$CASEY_LINT_BIN/hadolint" backend/Dockerfile
check "cargo fmt" bash -c "cargo fmt --check && (cd backend && cargo fmt --check)"

step "docker engine + registry on loopback"
bash .ci/docker.sh start
services_started=1
# shellcheck disable=SC1090
source "$(bash .ci/docker.sh env)"
# Local equivalents of backend/Dockerfile's base images (no registry outside is
# reachable); tests/production_image.rs builds on them.
check "base images (.ci/base-images.sh)" env CASEY_CACHE="$CASEY_CACHE" bash .ci/base-images.sh
# shellcheck disable=SC1091
[ -f "$CASEY_CACHE/base-images/images.env" ] && source "$CASEY_CACHE/base-images/images.env"

suite() { # NAME CMD...: a test runner; its totals are counted, and a runner
  # that fails without reporting a failed test (a build error) counts as one.
  local name=$1 log; log="$log_dir/$(echo "$1" | tr -c 'a-z0-9' '_').log"; shift
  step "$name"
  local before=$failed
  if ! "$@" 2>&1 | tee "$log"; then
    count "$log"
    if [ "$failed" -eq "$before" ]; then failed=$((failed + 1)); echo "FAILED: $name (no test result)"; fi
  else
    count "$log"
  fi
}

suite "emulator tests (pytest)" "$CASEY_PYTHON" -m pytest -q emulator
suite "casey-deploy tests (cargo test)" cargo test --no-fail-fast
suite "backend tests (cargo test)" bash -c "cd backend && CARGO_TARGET_DIR='$CASEY_CACHE/backend-target' cargo test --no-fail-fast"

echo
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]

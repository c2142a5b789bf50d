#!/usr/bin/env bash
# Benchmarks against the project's emulator; prints figures side by side.
#   - `infra` with nothing to change vs the seed's refresh + plan + apply
#     (and a bare `terraform plan`, the floor);
#   - `backend-url` vs the seed-style get-backend-url script (terraform output
#     per value + aws CLI calls).
# Usage: bench/run.sh [RUNS]   (default 3; CASEY_BENCH_PROFILE=debug to skip the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=${1:-3}
source .ci/setup.sh

profile=${CASEY_BENCH_PROFILE:-release}
if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
bin="$CARGO_TARGET_DIR/$profile/casey-deploy"

work=$(mktemp -d)
emu_pid=""
cleanup() { [ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$CASEY_PYTHON" emulator/casey_emulator.py --host 127.0.0.1 --port 0 --seed-file "$work/seed.json" >"$work/emulator.log" 2>&1 &
emu_pid=$!
for _ in $(seq 600); do [ -s "$work/seed.json" ] && break; sleep 0.1; done
[ -s "$work/seed.json" ] || { echo "the emulator did not start:"; cat "$work/emulator.log"; exit 1; }
seed() { "$CASEY_PYTHON" -c "import json,sys; d=json.load(open('$work/seed.json')); print($1)"; }
endpoint=$(seed "d['endpoint_url']")

mkdir -p "$work/project/terraform"
cp terraform/*.tf terraform/.terraform.lock.hcl "$work/project/terraform/"
printf 'provider "aws" {\n  max_retries = 1\n}\n' > "$work/project/terraform/bench_override.tf"
{
  echo "AWS_REGION=us-east-1"
  echo "AWS_ACCESS_KEY_ID=$(seed "d['users']['casey_aniruddh']['access_key_id']")"
  echo "AWS_SECRET_ACCESS_KEY=$(seed "d['users']['casey_aniruddh']['secret_access_key']")"
} > "$work/project/terraform/.env"
chmod 600 "$work/project/terraform/.env"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
export AWS_ENDPOINT_URL="$endpoint" AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
tf="$work/project/terraform"

casey() { "$bin" --project-dir "$work/project" "$@"; }
echo "setting up: casey-deploy infra --yes (first apply)"
casey infra --yes >"$work/apply.log" 2>&1 || { tail -30 "$work/apply.log"; exit 1; }
if grep -q 'is not in ECR yet' "$work/apply.log"; then
  # The first apply leaves the ECS service out until its image is in ECR:
  # record one (a manifest, as a push would) and create the service.
  layer="sha256:$(printf bench | sha256sum | cut -d' ' -f1)"
  manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\",\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\",\"size\":5,\"digest\":\"$layer\"},\"layers\":[{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":5,\"digest\":\"$layer\"}]}"
  (set -a; source "$tf/.env"; set +a
   "$CASEY_PYTHON" -m awscli ecr put-image --region "$AWS_REGION" --repository-name casey-backend --image-tag latest --image-manifest "$manifest" >/dev/null)
  casey infra --yes >"$work/apply.log" 2>&1 || { tail -30 "$work/apply.log"; exit 1; }
fi

# median of N timings of a command, in seconds
time_it() {
  local times=() i start end
  for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    "$@" >"$work/last.log" 2>&1 || { echo "benchmark command failed: $*" >&2; tail -20 "$work/last.log" >&2; exit 1; }
    end=$(date +%s.%N)
    times+=("$(awk "BEGIN {print $end - $start}")")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'
}

seed_deploy() ( # the seed's deploy.sh sequence, with the admin's .env sourced
  set -a; source "$tf/.env"; set +a
  terraform -chdir="$tf" refresh -input=false -no-color
  terraform -chdir="$tf" plan -input=false -no-color
  terraform -chdir="$tf" apply -input=false -auto-approve -no-color
)
bare_plan() (
  set -a; source "$tf/.env"; set +a
  terraform -chdir="$tf" plan -input=false -no-color -detailed-exitcode
)
seed_backend_url() ( # what scripts/get-backend-url.sh did: one terraform call per value, the aws CLI for the rest
  set -a; source "$tf/.env"; set +a
  cluster=$(terraform -chdir="$tf" output -raw ecs_cluster_name)
  service=$(terraform -chdir="$tf" output -raw ecs_service_name)
  region=$(terraform -chdir="$tf" output -raw aws_region)
  task=$("$CASEY_PYTHON" -m awscli ecs list-tasks --cluster "$cluster" --service-name "$service" --desired-status RUNNING --region "$region" --query 'taskArns[0]' --output text)
  eni=$("$CASEY_PYTHON" -m awscli ecs describe-tasks --cluster "$cluster" --tasks "$task" --region "$region" --query "tasks[0].attachments[0].details[?name=='networkInterfaceId'].value" --output text)
  ip=$("$CASEY_PYTHON" -m awscli ec2 describe-network-interfaces --network-interface-ids "$eni" --region "$region" --query 'NetworkInterfaces[0].Association.PublicIp' --output text)
  echo "BACKEND_WS_URL=ws://$ip:3001/ws"
)

echo "measuring ($runs runs each, median; $profile build)"
# `infra` and the bare plan alternate, run by run, so that a change of the
# machine's load during the benchmark reaches both alike.
infra_times=(); plan_times=()
for _ in $(seq "$runs"); do
  infra_times+=("$(runs=1 time_it casey infra)")
  plan_times+=("$(runs=1 time_it bare_plan)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
t_infra=$(median "${infra_times[@]}")
t_plan=$(median "${plan_times[@]}")
t_seed=$(time_it seed_deploy)
t_url=$(time_it casey backend-url)
t_seed_url=$(time_it seed_backend_url)

echo
printf '%-46s %10s\n' "what (nothing to change)" "seconds"
printf '%-46s %10s\n' "casey-deploy infra" "$t_infra"
printf '%-46s %10s\n' "seed: terraform refresh + plan + apply" "$t_seed"
printf '%-46s %10s\n' "terraform plan alone (the floor)" "$t_plan"
printf '%-46s %10s\n' "casey-deploy infra minus one plan" "$(awk "BEGIN {printf \"%.2f\", $t_infra - $t_plan}")"
printf '%-46s %10s\n' "casey-deploy infra / terraform plan (goal <= 1.10)" "$(awk "BEGIN {printf \"%.2f\", $t_infra / $t_plan}")"
echo
printf '%-46s %10s\n' "casey-deploy backend-url" "$t_url"
printf '%-46s %10s\n' "seed-style get-backend-url script" "$t_seed_url"

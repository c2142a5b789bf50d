#!/usr/bin/env bash
# ./deploy.sh: the seed's entry point, now `casey-deploy infra` (Terraform:
# one saved plan, shown, confirmed, applied). Arguments pass through, e.g.
# `./deploy.sh --var enable_alb=true`. `casey-deploy all` also builds, pushes,
# rolls out and prints the backend URL.
exec "$(dirname "${BASH_SOURCE[0]}")/scripts/casey-deploy" infra "$@"

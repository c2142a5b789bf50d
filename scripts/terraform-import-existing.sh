#!/usr/bin/env bash
# The seed's script, now `casey-deploy import`: imports the stack's resources
# that already exist in AWS (log groups, IAM policies, ...) into the state.
exec "$(dirname "${BASH_SOURCE[0]}")/casey-deploy" import "$@"

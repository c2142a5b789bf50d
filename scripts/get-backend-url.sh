#!/usr/bin/env bash
# The seed's script, now `casey-deploy backend-url`: prints
# BACKEND_WS_URL=ws://<task ip>:3001/ws (or the ALB's URL).
exec "$(dirname "${BASH_SOURCE[0]}")/casey-deploy" backend-url "$@"

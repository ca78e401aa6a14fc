#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the end-to-end demo; extra args go to `featurestream demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

if .venv/bin/featurestream demo --help >/dev/null 2>&1; then
  exec .venv/bin/featurestream demo "$@"
fi
echo "demo.sh: 'featurestream demo' is not there yet; starting the local stack instead (Ctrl-C stops it)" >&2
exec .venv/bin/featurestream up "$@"

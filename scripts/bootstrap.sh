#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: redis-server, .venv, and this
# package with its test extra. Reruns are fast: pip runs only when
# pyproject.toml changed since the last successful install (hash in a stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing redis-server with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
  else
    echo "bootstrap: redis-server is missing; run 'sudo apt-get install -y redis-server' (or set FEATURESTREAM_REDIS)" >&2
    exit 1
  fi
fi

# Headless Chromium drives the dashboard's browser test (tests/serving/test_ui_browser.py) via Playwright.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing chromium with apt-get (for the dashboard browser test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "bootstrap: chromium is missing; run 'sudo apt-get install -y chromium' (the dashboard browser test needs it)" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python=""
  for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python=$candidate
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "bootstrap: Python >= 3.11 not found; install it (apt-get install python3.11 python3.11-venv) or set PYTHON" >&2
    exit 1
  fi
  echo "bootstrap: creating .venv with $python" >&2
  "$python" -m venv .venv
fi

stamp=.venv/.featurestream-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing featurestream[test] into .venv (first run takes a few minutes)" >&2
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    echo "bootstrap: pip install failed (log above, also in .venv/pip-install.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# Set this machine up for Kakehashi (Debian 12 / Raspberry Pi OS): the Debian packages it needs, a .venv, and the
# package with its development extras. Idempotent and quick when everything is already there. Used by
# `make demo` and `make test`; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(mosquitto socat postgresql)
VENV=.venv
STAMP="$VENV/.kakehashi-installed"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- Python 3.11 or newer --------------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || die "python3 is not installed: run \`sudo apt-get install -y python3 python3-venv\`"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Kakehashi needs Python 3.11 or newer (found $("$PYTHON" -V 2>&1)): use Debian 12 or set PYTHON=/path/to/python3.11"
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  DEBS+=(python3-venv)
fi

# --- Debian packages -------------------------------------------------------------------------------------------
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    die "missing Debian packages ${missing[*]}: run \`sudo apt-get install -y ${missing[*]}\` and try again"
  fi
fi

# --- virtual environment and the package -----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" ]]; then
  say "installing kakehashi and its development tools into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$STAMP"
fi

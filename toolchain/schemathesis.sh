#!/usr/bin/env bash
# schemathesis, the property-based tester of the REST API's OpenAPI document, in a virtual
# environment under the toolchain cache (never in the repository). The contract test runs it.
#
#   schemathesis.sh up     install it when missing or of another version (idempotent); print the path of `st`
#
# Needs python3 with its venv module and PyPI (or the mirror pip is configured for).
set -Eeuo pipefail

SCHEMATHESIS_VERSION=4.32.5
CACHE="${PGVAULT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgvault-creds}"
VENV="$CACHE/schemathesis-$SCHEMATHESIS_VERSION"
LOG="$CACHE/logs/schemathesis.log"

fail() {
  printf '[schemathesis] FAILED: %s\n  next: %s\n' "$1" "$2" >&2
  [ -f "$LOG" ] && tail -n 15 "$LOG" >&2
  exit 1
}

up() {
  # The marker is written last: an interrupted install is redone, not used half-made.
  if [ -x "$VENV/bin/st" ] && [ -f "$VENV/.installed" ]; then
    echo "$VENV/bin/st"
    return
  fi
  mkdir -p "$CACHE/logs"
  command -v python3 >/dev/null || fail "python3 is not on PATH" "install Python 3.9 or later (Debian: apt-get install python3 python3-venv)"
  rm -rf "$VENV"
  printf '[schemathesis] installing schemathesis==%s into %s\n' "$SCHEMATHESIS_VERSION" "$VENV" >&2
  python3 -m venv "$VENV" >"$LOG" 2>&1 || fail "python3 -m venv $VENV" "install the venv module (Debian: apt-get install python3-venv), then run again"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input "schemathesis==$SCHEMATHESIS_VERSION" >>"$LOG" 2>&1 ||
    fail "pip install schemathesis==$SCHEMATHESIS_VERSION" "check that pip reaches PyPI (pip config list); full log: $LOG"
  "$VENV/bin/st" --version >>"$LOG" 2>&1 || fail "$VENV/bin/st --version" "the install is broken; delete $VENV and run again"
  touch "$VENV/.installed"
  echo "$VENV/bin/st"
}

case "${1:-up}" in
  up) up ;;
  *) fail "unknown command \"$1\"" "use: bash toolchain/schemathesis.sh up" ;;
esac

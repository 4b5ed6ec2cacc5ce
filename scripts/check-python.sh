#!/usr/bin/env bash
# Refuse, with a hint, a Python that the pinned lock cannot install into (make install calls it).
set -euo pipefail
PY="${1:-python3}"
if ! command -v "$PY" >/dev/null; then
  echo "make install: '$PY' not found; install Python 3.11 (Debian: apt-get install python3 python3-venv)" >&2; exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "make install: the lock (requirements.txt) is for Python 3.11; '$PY' is $("$PY" -V 2>&1)." >&2
  echo "  Run: make install PY=/path/to/python3.11" >&2; exit 1
fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "make install: '$PY' lacks venv/ensurepip (Debian: apt-get install python3-venv, as root)" >&2; exit 1
fi

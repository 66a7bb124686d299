#!/usr/bin/env bash
# Prints a Python 3.12+ interpreter, or explains what is missing and fails.
set -eu
for candidate in python3.12 python3.13 python3.14 python3; do
  if command -v "$candidate" >/dev/null 2>&1; then
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      command -v "$candidate"
      exit 0
    fi
  fi
done
echo "CCGSC needs Python 3.12 or newer (Django 6). Install python3.12 (or newer) and re-run." >&2
exit 1

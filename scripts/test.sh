#!/usr/bin/env bash
# The test suite, from a fresh clone: venv + install + pytest (offline, CPU). Extra arguments
# go to pytest: `bash scripts/test.sh -m "not slow"` is the fast tier, no argument the whole
# suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The Fashion-MNIST test reads the files of Debian's dataset-fashion-mnist package; as root
# (CI) it is installed here, so that the test runs instead of being skipped.
fashion=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
if [ ! -e "$fashion" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's dataset-fashion-mnist for the Fashion-MNIST test" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq dataset-fashion-mnist >/dev/null; }; then
      echo "warning: could not install dataset-fashion-mnist; the Fashion-MNIST test" \
           "will be skipped" >&2
    fi
  else
    echo "note: $fashion is missing (not root, or no apt-get): the Fashion-MNIST test will" \
         "be skipped; install it with: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
. .venv/bin/activate
export JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest -n "${T2W_TEST_WORKERS:-2}" --dist loadfile "$@"

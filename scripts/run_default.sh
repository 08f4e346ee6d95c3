#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: corpus -> generator -> evaluation,
# ending with the results table. Resumable: rerun with the same WORKDIR to continue.
#   bash scripts/run_default.sh [WORKDIR [CORPUS_VARIANT]]   (default: runs/default, "")
# CORPUS_VARIANT is a configs/corpus.py variant, e.g. "net=adapter4,tasks=5-10" for the
# T2W paper's subtask family (a bottleneck adapter on a frozen trunk).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-runs/default}
CORPUS_VARIANT=${2:-}
bash scripts/setup_env.sh
. .venv/bin/activate
export JAX_PLATFORMS=${JAX_PLATFORMS:-} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -n "$JAX_PLATFORMS" ] || unset JAX_PLATFORMS
mkdir -p "$WORKDIR"
start=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - start )) s elapsed)"; }
# run LOG FILTER CMD...: full output appended to LOG (a rerun keeps the log of an interrupted
# attempt, under its own dated header), the lines matching FILTER to the terminal; stops the
# job (naming the log) if CMD fails.
run() {
  local log=$1 filter=$2; shift 2
  echo "== attempt at $(date -u +%Y-%m-%dT%H:%M:%SZ): $*" >> "$log"
  set +e
  "$@" 2>&1 | tee -a "$log" | grep --line-buffered -E "$filter"
  local status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then echo "failed ($status): see $log" >&2; exit "$status"; fi
}
stage "corpus"
run "$WORKDIR/corpus.log" 'corpus: [0-9]|generalist: (step|kept)|trunk:|^\||nets in|^error' \
  python launch/make_corpus.py --config="configs/corpus.py${CORPUS_VARIANT:+:$CORPUS_VARIANT}" \
  --workdir="$WORKDIR"
stage "generator"
run "$WORKDIR/train.log" 'progress:|step [0-9]+:|done:' \
  python launch/train.py --config=configs/dit.py --workdir="$WORKDIR"
stage "evaluation"
run "$WORKDIR/eval.log" '^[^IW]|^I.*(evaluat|progress)' \
  python launch/evaluate.py --config=configs/eval.py --workdir="$WORKDIR"
stage "done"

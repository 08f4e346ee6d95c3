#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one short command, for a machine with one GPU
# whose python3 already holds a CUDA build of JAX, flax, optax, orbax and (for the
# side-by-side) torch, and which can fetch nothing.
#
#   bash scripts/gpu_checks.sh wheels [T2W_CHECKOUT]
#       here, where pip reaches its registry: the wheels of the packages t2w_jax needs that
#       such a machine lacks (for its Python 3.12) into .whl/, and a copy of a checkout of
#       the PyTorch T2W into .t2w/ (both git-ignored; they travel with the working tree).
#   bash scripts/gpu_checks.sh run OUTDIR
#       there: installs .whl/ into a private folder, then times, each under its own time
#       limit and logged to OUTDIR, the CIFAR-size DiT in bf16 over a batch sweep (the MFU
#       target), the corpus trainer, and (with .t2w/) the side-by-side with the PyTorch
#       T2W in bf16. A step that fails is logged and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks of requirements.txt and its dependencies (the image holds jax,
# flax, optax, orbax-checkpoint, chex, transformers, numpy, protobuf, pyarrow, etils and
# the rest). promise has no wheel: its source archive is pure Python.
WHEELS=(array-record clu dm-tree docstring-parser googleapis-common-protos immutabledict
        importlib-resources ml-collections simple-parsing tensorboardx tensorflow-datasets
        tensorflow-metadata termcolor toml)
SOURCES=(promise)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

# The installed version of each package in this checkout's venv, so both machines run the
# same versions ("name==version", or the bare name when the venv lacks it).
pinned() {
  local name=$1 version
  version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  if [ -n "$version" ]; then echo "$name==$version"; else echo "$name"; fi
}

wheels() {
  local t2w=${1:-}
  local platform_flags=() pkg
  for p in "${PLATFORMS[@]}"; do platform_flags+=(--platform "$p"); done
  mkdir -p .whl
  for pkg in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${platform_flags[@]}" -d .whl "$(pinned "$pkg")" || exit 1
  done
  for pkg in "${SOURCES[@]}"; do
    python3 -m pip download -q --no-deps --no-binary=:all: -d .whl "$(pinned "$pkg")" || exit 1
  done
  if [ -n "$t2w" ]; then
    rm -rf .t2w && mkdir -p .t2w && (cd "$t2w" && git archive HEAD) | tar -x -C .t2w || exit 1
  fi
  du -sh .whl ${t2w:+.t2w}
  echo "carry: .whl${t2w:+ .t2w}"
}

# step NAME SECONDS CMD...: runs CMD under a time limit, its output in OUTDIR/NAME.log.
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  echo "   exit $status after $((SECONDS - start)) s"
  tail -n 25 "$OUT/$name.log"
}

run() {
  OUT=${1:?usage: gpu_checks.sh run OUTDIR}
  mkdir -p "$OUT"
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --no-build-isolation --upgrade --target /tmp/t2w_site .whl/* || exit 1
    export PYTHONPATH=/tmp/t2w_site
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  python3 -c "import jax; print(jax.__version__, jax.devices())" >> "$OUT/gpu.txt" 2>&1
  cat "$OUT/gpu.txt"
  step dit 240 python3 launch/bench.py dit --dtype bfloat16 \
    --batch_sizes 32,128,256,512,1024 --json "$OUT/dit_gpu.json"
  step corpus 150 python3 launch/bench.py corpus --torch_python python3 \
    --json "$OUT/corpus_gpu.json"
  if [ -d .t2w ]; then
    step pytorch 180 python3 launch/bench.py pytorch --t2w_repo .t2w --torch_python python3 \
      --dtype bfloat16 --rounds 2 --json "$OUT/pytorch_gpu_bf16.json"
  fi
}

case "${1:-}" in
  wheels) shift; wheels "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash scripts/gpu_checks.sh wheels [T2W_CHECKOUT] | run OUTDIR" >&2; exit 2 ;;
esac

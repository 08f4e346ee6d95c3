"""XLA:CPU options measured, not assumed: the DiT train step under each set of XLA_FLAGS.

``python launch/bench.py xla_flags [--flags "A;B;..."]`` runs, for each candidate set of
``XLA_FLAGS`` (the default: none, oneDNN's rewriter, oneDNN fusions of dots, XNNPACK dot
fusions, YNNPACK fusions off), a fresh subprocess (XLA reads its flags once, at start-up)
that times the f32 2048^3 matmul and the CIFAR-size DiT-only train step of ``dit_bench``
(our default, prior attention). The candidates take turns, ``--rounds`` times, and each
is reported as its median against the no-flags run's median of the same run. A candidate
that XLA rejects, or that crashes, is reported as such and is not a result.
"""
import json
import os
import subprocess
import sys

from benchmarks import harness

# Candidate XLA_FLAGS, by name (names of XLA:CPU's options in the jaxlib this was written
# against; an option a later jaxlib no longer knows shows as a failed candidate).
CANDIDATES = {
    "none (XLA's defaults)": "",
    "oneDNN rewriter": "--xla_cpu_use_onednn=true",
    "oneDNN dot fusions": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "XNNPACK dot fusions": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "YNNPACK fusions off": "--xla_cpu_experimental_ynn_fusion_type=",
}

_CHILD = """
import json, sys, dataclasses
sys.path.insert(0, {root!r})
from benchmarks import dit_bench, harness
from configs import dit as dit_config
size = dit_bench.QUICK_SIZE if {quick!r} else dit_bench.CIFAR_SIZE
mm = harness.matmul_peak({n}, "float32", repeats=3)
t = dit_bench.bench_train(size, dit_config.get_config("small"), "float32", repeats={repeats},
                          train_steps={steps})
print("RESULT " + json.dumps({{"matmul_gflops_per_s": mm["gflops_per_s"],
                              "train_samples_per_s": t["samples_per_s"],
                              "compile_seconds": t["compile_seconds"]}}))
"""


def run_candidate(flags: str, *, quick: bool, repeats: int, steps: int, matmul_size: int,
                  timeout: float) -> dict:
  """One subprocess under ``XLA_FLAGS=flags``: its figures, or why there are none."""
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  code = _CHILD.format(root=harness.ROOT, quick=quick, n=matmul_size, repeats=repeats,
                       steps=steps)
  try:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=harness.ROOT)
  except subprocess.TimeoutExpired:
    return {"status": "failed", "reason": f"ran past {timeout:g} s"}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return dict(json.loads(line[len("RESULT "):]), status="ok")
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  return {"status": "failed", "reason": f"exit {proc.returncode}: {tail[:300]}"}


def run(*, quick: bool = False, rounds: int | None = None, candidates: dict | None = None,
        matmul_size: int | None = None, timeout: float = 1800) -> dict:
  """Every candidate, in turns; see the module docstring.

  Args:
    quick: tiny DiT and matmul, one round (smoke test).
    rounds: turns of all candidates (the median of each is reported).
    candidates: {name: XLA_FLAGS}; default ``CANDIDATES``. The first is the baseline.
    matmul_size: n of the matmul.
    timeout: seconds one subprocess may take.

  Returns:
    dict with the machine, commit, date and, per candidate, its runs and medians.
  """
  candidates = dict(candidates or CANDIDATES)
  rounds = rounds or (1 if quick else 2)
  n = matmul_size or (128 if quick else 2048)
  runs = {name: [] for name in candidates}
  for _ in range(rounds):
    for name, flags in candidates.items():
      runs[name].append(run_candidate(flags, quick=quick, repeats=1 if quick else 2,
                                      steps=1 if quick else 2, matmul_size=n,
                                      timeout=timeout))
  out = []
  for name, flags in candidates.items():
    ok = [r for r in runs[name] if r["status"] == "ok"]
    out.append({"name": name, "xla_flags": flags, "runs": runs[name],
                "matmul_gflops_per_s": harness.median([r["matmul_gflops_per_s"] for r in ok])
                if ok else None,
                "train_samples_per_s": harness.median([r["train_samples_per_s"] for r in ok])
                if ok else None,
                "failed": [r["reason"] for r in runs[name] if r["status"] != "ok"]})
  return {"benchmark": "xla_flags", "date": harness.utc_now(), "quick": quick,
          "machine": harness.machine_info(), "commit": harness.git_commit(harness.ROOT),
          "rounds": rounds, "matmul_n": n, "candidates": out}


def format_report(result: dict) -> str:
  """The printed table: each candidate against the first (no flags)."""
  base = result["candidates"][0]
  rows = []
  for c in result["candidates"]:
    if c["train_samples_per_s"] is None:
      rows.append([c["name"], c["xla_flags"] or "-", "failed", "", "failed: "
                   + "; ".join(c["failed"])[:120], ""])
      continue
    rows.append([c["name"], c["xla_flags"] or "-", f"{c['matmul_gflops_per_s']:.1f}",
                 f"{c['matmul_gflops_per_s'] / base['matmul_gflops_per_s']:.2f}x"
                 if base["matmul_gflops_per_s"] else "",
                 f"{c['train_samples_per_s']:.2f}",
                 f"{c['train_samples_per_s'] / base['train_samples_per_s']:.2f}x"
                 if base["train_samples_per_s"] else ""])
  return (f"XLA:CPU options ({result['date']}; {harness.describe_machine(result['machine'])}; "
          f"t2w_jax {harness.describe_commit(result['commit'])}): {result['rounds']} "
          f"round(s), medians; f32 {result['matmul_n']}^3 matmul and the CIFAR-size DiT "
          "train step (prior attention), each candidate in a fresh process\n"
          + harness.format_table(["candidate", "XLA_FLAGS", "matmul GFLOP/s", "vs none",
                                  "train samples/s", "vs none"], rows))

"""Where the DiT's time goes: a per-op profile of its train step and its denoising call.

``python launch/bench.py profile [--conditioning prior|token] [--dtype bfloat16]`` traces
the DiT-only train step of ``dit_bench`` (at the PyTorch T2W's CIFAR-100 size) and one
batch-1 denoising call with ``jax.profiler``, reads the trace back
(``jax.profiler.ProfileData``), and charges each executed XLA op to a part of the model
through the op's JAX name stack in the compiled HLO:

* adaLN modulation (the per-block Dense from the conditioning vector to shifts, scales and
  gates), attention projections (Q, K, V, out), the attention core (QK^T, softmax, AV),
  the MLP, norms with modulation and residual adds, the embeddings and projections in and
  out (tokens, timestep, text, class tokens, final layer), and outside the model the
  optimiser update with the loss and the random numbers;
* forward and backward separately, and matmuls (dots, also when fused) apart from the rest;
* "unattributed": ops that XLA made while rewriting the graph and that kept no name stack.

Each row is the time the ops of that part ran, per step, summed over threads (XLA:CPU runs
independent ops side by side, so rows can add up to more than the wall time). The wall
time per step comes from untraced timed steps; "host and idle" is the part of it in which
no op ran. The matmul line divides the model's FLOPs (``model_flops_per_example``) by the
time spent in matmuls and compares it with a large matmul measured in the same run; the
batch-1 call's also with a same-run chain of products with as few rows
(``harness.row_products_rate``), which is what such a call can reach.
"""
import collections
import dataclasses
import glob
import re
import tempfile
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import dit_bench, harness
from t2w_jax.models import model_flops_per_example

# The parts of the model, in report order; ``classify`` names one for each op.
PARTS = ("adaLN modulation", "attention projections", "attention core", "MLP",
         "norms, modulation, residuals", "embeddings, in/out projections",
         "optimiser update and loss", "random numbers", "unattributed")
_MATMUL_OPCODES = ("dot", "convolution")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ATTENTION_CORE = ("bhqk", "softmax", "attention_weights")


@dataclasses.dataclass(frozen=True)
class HloOp:
  """One HLO instruction: its opcode, its JAX name stack, whether it runs a matmul."""
  opcode: str
  op_name: str
  matmul: bool


def hlo_ops(hlo_text: str) -> dict[str, HloOp]:
  """Every instruction of a compiled module's text, by name.

  A fusion (or a call) counts as a matmul when a computation it calls, at any depth,
  holds a dot or a convolution: XLA:CPU fuses dots with their neighbours. An instruction
  without a name stack of its own (some fusions) takes the one of the dot it calls, else
  of any instruction it calls.
  """
  calls: dict[str, list[str]] = collections.defaultdict(list)
  dot_names: dict[str, list[str]] = collections.defaultdict(list)  # name stacks of dots
  any_names: dict[str, list[str]] = collections.defaultdict(list)
  pending = []  # (instruction name, opcode, op_name, called computations)
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode, rest = m.groups()
    called = _CALLS.findall(rest)
    op_name = _OP_NAME.search(rest)
    op_name = op_name.group(1) if op_name else ""
    if current is not None:
      calls[current].extend(called)
      if opcode in _MATMUL_OPCODES:
        dot_names[current].append(op_name)
      if op_name:
        any_names[current].append(op_name)
    pending.append((name, opcode, op_name, called))

  def reachable(comps: list[str]) -> list[str]:
    seen, stack = [], list(comps)
    while stack:
      c = stack.pop()
      if c not in seen:
        seen.append(c)
        stack.extend(calls.get(c, ()))
    return seen

  ops: dict[str, HloOp] = {}
  for name, opcode, op_name, called in pending:
    inner = reachable(called)
    dots = [n for c in inner for n in dot_names.get(c, ())]
    if not op_name:
      named = dots + [n for c in inner for n in any_names.get(c, ())]
      op_name = next((n for n in named if n), "")
    ops[name] = HloOp(opcode, op_name, opcode in _MATMUL_OPCODES or bool(dots))
  return ops


def classify(op: HloOp) -> tuple[str, str]:
  """(part of ``PARTS``, "forward" | "backward" | "update") of one op from its name stack."""
  name = op.op_name
  if not name:  # XLA made the op and kept no name stack (e.g. some rewritten dots)
    return "unattributed", "unknown"
  if "transpose(" in name:
    phase = "backward"
  elif "jvp(" in name or "DiT" in name:
    phase = "forward"
  else:
    phase = "update"
  if any(s in name for s in ("_normal", "_uniform", "random_bits", "threefry")):
    return "random numbers", phase
  if phase == "update" and "DiT" not in name:
    return "optimiser update and loss", phase
  if "adaLN_modulation" in name and "/final/" not in name:
    return "adaLN modulation", phase
  if "/attn/" in name or "/cross_attn/" in name:
    core = any(s in name for s in _ATTENTION_CORE) or not op.matmul and "_kernel" not in name
    if "ni,io->no" in name:  # layers.project: Q, K, V and out
      core = False
    return ("attention core" if core else "attention projections"), phase
  if "/mlp/" in name:
    return "MLP", phase
  if re.search(r"/block_\d+/", name):
    return "norms, modulation, residuals", phase
  if "DiT" in name:
    return "embeddings, in/out projections", phase
  return "optimiser update and loss", phase


def _interval_union(intervals: list[tuple[float, float]]) -> float:
  """Total length covered by a set of [start, end) intervals."""
  total, end = 0.0, -np.inf
  for s, e in sorted(intervals):
    if e <= end:
      continue
    total += e - max(s, end)
    end = e
  return total


def trace_ops(fn: Callable[[], Any], calls: int, known: dict[str, HloOp]
              ) -> tuple[dict[str, float], float, float]:
  """Runs ``fn`` ``calls`` times under ``jax.profiler.trace``.

  Returns:
    (ns per call of each op name in ``known``, summed over threads; ns per call in which
    at least one op ran; ns per call of ops not in ``known``).
  """
  with tempfile.TemporaryDirectory(prefix="t2w_profile_") as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(calls):
        jax.block_until_ready(fn())
    files = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
    if not files:
      raise RuntimeError(f"jax.profiler wrote no trace under {tmp}")
    data = jax.profiler.ProfileData.from_file(files[0])
  per_op: dict[str, float] = collections.defaultdict(float)
  intervals, unknown = [], 0.0
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if ev.name in known:
          per_op[ev.name] += ev.duration_ns / calls
          intervals.append((ev.start_ns, ev.start_ns + ev.duration_ns))
        elif ":" not in ev.name and not ev.name.startswith(("end:", "$")):
          unknown += ev.duration_ns / calls
  return dict(per_op), _interval_union(intervals) / calls, unknown


def breakdown(fn: Callable[[], Any], compiled, calls: int, wall_s: float) -> dict:
  """Milliseconds per call of each part and phase, matmul or not, and the idle share."""
  known = hlo_ops(compiled.as_text())
  per_op, busy_ns, _ = trace_ops(fn, calls, known)
  rows = collections.defaultdict(float)
  matmul_ns = 0.0
  for name, ns in per_op.items():
    op = known[name]
    part, phase = classify(op)
    rows[(part, phase, "matmul" if op.matmul else "other")] += ns / 1e6
    matmul_ns += ns if op.matmul else 0.0
  return {"rows": [{"part": p, "phase": ph, "kind": k, "ms": ms}
                   for (p, ph, k), ms in sorted(rows.items())],
          "ops_ms": sum(per_op.values()) / 1e6, "busy_ms": busy_ns / 1e6,
          "wall_ms": wall_s * 1e3, "idle_ms": max(0.0, wall_s * 1e3 - busy_ns / 1e6),
          "matmul_ms": matmul_ns / 1e6}


def _wall(fn: Callable[[], Any], repeats: int) -> float:
  return harness.median(harness.time_calls(fn, repeats=repeats, warmup=1))


def profile_train(size: dit_bench.DiTSize, config, dtype: str, calls: int, repeats: int,
                  seed: int = 0) -> dict:
  """The DiT-only train step's breakdown (see ``breakdown``) and its FLOPs."""
  step_fn, params, opt_state, batch = dit_bench.train_inputs(size, config, dtype, seed)
  batch = jax.device_put(batch)
  # Donated, as in training: every call consumes the last call's params and optimiser state.
  step = jax.jit(step_fn, donate_argnums=(0, 1))
  key = jax.random.PRNGKey(seed)
  compiled = step.lower(params, opt_state, batch, key).compile()
  state = [params, opt_state]

  def fn():
    state[0], state[1], loss = compiled(state[0], state[1], batch, key)
    return loss

  wall = _wall(fn, repeats)
  out = breakdown(fn, compiled, calls, wall)
  out["flops"] = model_flops_per_example(size.flops_config()) * size.batch_size
  out["batch_size"] = size.batch_size
  return out


def profile_denoise(size: dit_bench.DiTSize, dtype: str, calls: int, repeats: int,
                    seed: int = 0) -> dict:
  """One batch-1 DiT forward's breakdown (see ``breakdown``) and its FLOPs."""
  call, args = dit_bench.denoise_inputs(size, dtype, seed)
  compiled = jax.jit(call).lower(*args).compile()
  fn = lambda: compiled(*args)  # noqa: E731
  wall = _wall(fn, repeats)
  out = breakdown(fn, compiled, calls, wall)
  out["flops"] = model_flops_per_example(size.flops_config(), training=False)
  out["batch_size"] = 1
  return out


def run(config, *, quick: bool = False, conditioning: str = "prior", dtype: str = "float32",
        repeats: int | None = None, calls: int | None = None,
        matmul_size: int | None = None) -> dict:
  """Profiles the train step and the batch-1 denoising call; see the module docstring.

  Args:
    config: the DiT config (its optimiser and schedule are the train step's).
    quick: tiny sizes, one call (smoke test).
    conditioning: "prior" (our default) or "token" (the PyTorch T2W's conditioning).
    dtype: the DiT's compute dtype.
    repeats: untraced timed calls for the wall time (median).
    calls: traced calls (the breakdown is per call).
    matmul_size: n of the same-run n^3 matmul.

  Returns:
    dict with the machine, commit, date, the matmul and "train" and "denoise" breakdowns.
  """
  size = dataclasses.replace(dit_bench.QUICK_SIZE if quick else dit_bench.CIFAR_SIZE,
                             conditioning=conditioning)
  repeats = repeats or (1 if quick else 3)
  calls = calls or (1 if quick else 3)
  n = matmul_size or (128 if quick else harness.default_matmul_size())
  matmul = harness.matmul_peak(n, "bfloat16" if dtype == "bfloat16" else "float32",
                               repeats=repeats, devices=jax.local_devices()[:1])
  # As many products as the call's attention has: 4 per block, 4 more with cross-attention.
  per_block = 8 if size.dit_switches()["cross_attention"] else 4
  row_products = harness.row_products_rate(size.num_tokens, size.width, per_block * size.depth,
                                           dtype, repeats=max(repeats, 3))
  return {"benchmark": "profile", "date": harness.utc_now(), "machine": harness.machine_info(),
          "commit": harness.git_commit(harness.ROOT), "quick": quick,
          "size": dataclasses.asdict(size), "dtype": dtype, "matmul": matmul,
          "row_products": row_products,
          "train": profile_train(size, config, dtype, calls, repeats),
          "denoise": profile_denoise(size, dtype, calls, repeats)}


def _table(b: dict, matmul_gflops: float, title: str) -> str:
  by_part = collections.defaultdict(lambda: collections.defaultdict(float))
  for r in b["rows"]:
    by_part[r["part"]][(r["phase"], r["kind"])] += r["ms"]
  rows = []
  for part in PARTS:
    cells = by_part.get(part)
    if not cells:
      continue
    total = sum(cells.values())
    mm = sum(v for (_, k), v in cells.items() if k == "matmul")
    rows.append([part, f"{sum(v for (p, _), v in cells.items() if p == 'forward'):.1f}",
                 f"{sum(v for (p, _), v in cells.items() if p == 'backward'):.1f}",
                 f"{total:.1f}", f"{mm:.1f}", f"{100 * total / b['ops_ms']:.1f} %"])
  rows.append(["all ops (summed over threads)", "", "", f"{b['ops_ms']:.1f}",
               f"{b['matmul_ms']:.1f}", "100 %"])
  achieved = b["flops"] / (b["matmul_ms"] / 1e3) / 1e9 if b["matmul_ms"] else float("nan")
  return (f"{title}: {b['wall_ms']:.1f} ms per call (untraced median), ops busy "
          f"{b['busy_ms']:.1f} ms, host and idle {b['idle_ms']:.1f} ms "
          f"({100 * b['idle_ms'] / b['wall_ms']:.1f} %)\n"
          + harness.format_table(["part", "forward ms", "backward ms", "total ms",
                                  "of it matmul ms", "share of op time"], rows)
          + f"\nmodel FLOPs over matmul time: {achieved:.1f} GFLOP/s, "
          f"{100 * achieved / matmul_gflops:.1f} % of the same-run matmul "
          f"({matmul_gflops:.1f} GFLOP/s)")


def format_report(result: dict) -> str:
  """The printed report: the two breakdowns with the machine, commit and date."""
  s = result["size"]
  head = (f"DiT profile ({result['date']}; {harness.describe_machine(result['machine'])}; "
          f"t2w_jax {harness.describe_commit(result['commit'])}): width {s['width']}, depth "
          f"{s['depth']}, {s['num_tokens']} tokens of {s['block_size']}, conditioning "
          f"{s['conditioning']!r}, {result['dtype']}")
  mm = result["matmul"]["gflops_per_s"]
  denoise = _table(result["denoise"], mm, "denoising call, batch 1")
  rp = result.get("row_products")
  if rp and result["denoise"]["matmul_ms"]:
    achieved = result["denoise"]["flops"] / (result["denoise"]["matmul_ms"] / 1e3) / 1e9
    denoise += (f"\n{100 * achieved / rp['gflops_per_s']:.1f} % of a same-run chain of "
                f"{rp['count']} dependent ({rp['rows']} x {rp['width']}) x ({rp['width']} x "
                f"{rp['width']}) {rp['dtype']} products over distinct kernels "
                f"({rp['gflops_per_s']:.1f} GFLOP/s; a small-row product's time follows its "
                f"kernel's bytes)")
  return "\n\n".join([head,
                      _table(result["train"], mm, f"train step, batch {s['batch_size']}"),
                      denoise])


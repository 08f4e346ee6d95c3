"""What every benchmark shares: the machine, timing, the matmul peak, tables, JSON output.

Every figure is the median of a few timed repeats taken after a warm-up (compilation), with
``jax.block_until_ready`` on the outputs, so asynchronous dispatch cannot flatter a number.
These helpers are shared by every benchmark and know nothing about any of them.
"""
import datetime
import json
import os
import shutil
import statistics
import subprocess
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t2w_jax.errors import MissingError
from t2w_jax.models import layers
from t2w_jax.platform import cpu_model


def machine_info() -> dict:
  """What the numbers were measured on: CPU, cores, JAX backend and devices, XLA flags."""
  devices = jax.local_devices()
  return {
      "cpu": cpu_model(),
      "cpu_cores": os.cpu_count(),
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "num_devices": len(devices),
      "device_kind": devices[0].device_kind if devices else "none",
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def describe_machine(info: dict) -> str:
  """One line naming the machine of ``machine_info``."""
  return (f"{info['cpu']}, {info['cpu_cores']} cores; jax {info['jax_version']} "
          f"{info['backend']}: {info['num_devices']} x {info['device_kind']}"
          + (f"; XLA_FLAGS={info['xla_flags']}" if info["xla_flags"] else ""))


def time_calls(fn: Callable[..., Any], *args, repeats: int = 3, warmup: int = 1) -> list[float]:
  """Wall-clock seconds of ``repeats`` calls of ``fn(*args)``, after ``warmup`` calls.

  Each call is timed up to ``jax.block_until_ready`` of its output.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def median(xs: Sequence[float]) -> float:
  """The median of a non-empty sequence."""
  if not xs:
    raise ValueError("median of an empty sequence")
  return float(statistics.median(xs))


def xla_flops(compiled) -> float:
  """FLOPs of a compiled program from XLA's cost analysis.

  Beware: XLA counts the body of a while loop (``lax.scan``, ``lax.map``) once, not once per
  iteration, so use this on loop-free programs and scale by the trip count yourself.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise ValueError("XLA cost analysis gave no flop count for this program")
  return float(cost["flops"])


def default_matmul_size() -> int:
  """n of the peak matmul: 2048 on CPU (seconds per call), 8192 on accelerators."""
  return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 3,
                devices: Sequence[Any] | None = None) -> dict:
  """GFLOP/s of an n x n x n matmul on every device at once (one matmul per device).

  With one single-threaded XLA device per core this measures the whole CPU under the same
  set-up as a program sharded over those devices; with one device (a GPU, or a CPU device
  using all cores) it is the usual single-matmul figure. float32 runs at XLA's default
  precision, which on recent NVIDIA GPUs means TF32 tensor cores.

  Args:
    n: matrix size.
    dtype: "float32" or "bfloat16". A bfloat16 matmul accumulates in and returns float32
      (``preferred_element_type``), the form the models' products take
      (``models.layers.einsum``); on a CPU it is also the only form XLA gives to the bf16
      matrix units, a bf16 result being several times slower there.
    repeats: timed repeats (the median is reported).
    devices: devices to use (default: all local devices).

  Returns:
    dict with n, dtype, devices, seconds (median), gflops_per_s (all devices together),
    gflops_per_s_per_device.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  k = len(devices)
  mesh = Mesh(np.asarray(devices), ("d",))
  sharding = NamedSharding(mesh, P("d"))
  rng = np.random.default_rng(0)
  # Random values, not ones: some backends shortcut trivial inputs.
  a, b = (jax.device_put(rng.standard_normal((k, n, n), np.float32).astype(jnp.dtype(dtype)),
                         sharding) for _ in range(2))
  accumulate = jnp.float32 if jnp.dtype(dtype) == jnp.bfloat16 else None
  mm = jax.jit(lambda x, y: jnp.einsum("kij,kjl->kil", x, y, preferred_element_type=accumulate),
               out_shardings=sharding)
  seconds = median(time_calls(mm, a, b, repeats=repeats))
  gflops = k * 2.0 * n**3 / seconds / 1e9
  return {"n": n, "dtype": dtype, "devices": k, "seconds": seconds, "gflops_per_s": gflops,
          "gflops_per_s_per_device": gflops / k}


def row_products_rate(rows: int, width: int, count: int, dtype: str = "float32",
                      repeats: int = 5) -> dict:
  """GFLOP/s of a chain of ``count`` dependent (rows, width) x (width, width) products, each
  over its own kernel stored (out, in), on the default device: the products of a batch-1
  denoising call (one row per weight token), which read every kernel once per call.

  A small-row product's time follows the bytes of its kernel (read and packed for a few
  rows of arithmetic: on a CPU the bf16 chain runs at about twice the f32 one), so the
  2048^3 matmul (``matmul_peak``) overstates what such a call can reach; this is its
  same-run reference. Each product is the models' own (``models.layers.project``: in
  bfloat16 on kernels held in bf16, as sampling holds them, accumulating in float32); a
  tanh between products keeps them in order.

  Returns:
    dict with rows, width, count, dtype, seconds (median per chain), gflops_per_s.
  """
  rng = np.random.default_rng(0)
  dt = jnp.dtype(dtype)
  kernels = [jnp.asarray(rng.standard_normal((width, width), np.float32) / np.sqrt(width),
                         dt) for _ in range(count)]
  x = jnp.asarray(rng.standard_normal((rows, width), np.float32))

  @jax.jit
  def chain(x, kernels):
    for k in kernels:
      x = jnp.tanh(layers.project(x, k, 1, dt, out_dtype=jnp.float32))
    return x
  seconds = median(time_calls(chain, x, kernels, repeats=repeats))
  return {"rows": rows, "width": width, "count": count, "dtype": dtype, "seconds": seconds,
          "gflops_per_s": count * 2.0 * rows * width * width / seconds / 1e9}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table; floats get 4 significant digits."""
  def cell(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    return str(v)
  lines = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON, atomically (temp file, then os.replace)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def git_commit(path: str) -> dict:
  """``{"commit": sha or None, "dirty": bool or None}`` of the git work tree at ``path``."""
  def git(*args):
    proc = subprocess.run(["git", "-C", path, *args], capture_output=True, text=True,
                          timeout=30, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None
  try:
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
  except (OSError, subprocess.SubprocessError):
    commit = status = None
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def describe_commit(c: dict) -> str:
  """"commit 0123abc" (+ " with local changes"), or "commit unknown (not a git work tree)"."""
  if not c["commit"]:
    return "commit unknown (not a git work tree)"
  return f"commit {c['commit'][:12]}" + (" with local changes" if c["dirty"] else "")


# The repository root (the checkout whose commit the reports name).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def utc_now() -> str:
  """The current UTC time, ISO 8601 to the second (when a benchmark ran)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_python(python: str) -> str:
  """``python`` as given if it names an executable (a path, or a name on PATH).

  Raises:
    MissingError: it names no executable.
  """
  found = python if os.sep in python else shutil.which(python)
  if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
    raise MissingError(f"--torch_python {python!r} is not an executable Python")
  return found


def run_driver(cmd: Sequence[str], *, threads: int, timeout: float, what: str) -> dict:
  """Runs a PyTorch driver (``cmd`` ends in ``--json PATH``) and returns that JSON.

  Torch's thread pools, OpenMP's included, are held to ``threads``.

  Args:
    cmd: the driver's command line; its last argument is where it writes its result.
    threads: torch's intra-op threads.
    timeout: seconds it may take.
    what: how errors name it (e.g. "the PyTorch peers").

  Raises:
    MissingError: the interpreter could not be started.
    RuntimeError: it ran past ``timeout``, or exited without writing its result.
  """
  out = cmd[-1]
  # Also for the OpenMP pools torch starts before set_num_threads runs.
  env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
  try:
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f"{what} ran past --torch_timeout {timeout:g} s") from e
  except OSError as e:
    raise MissingError(f"--torch_python {cmd[0]!r} could not be started: {e}") from e
  if proc.returncode != 0 or not os.path.isfile(out):
    raise RuntimeError(f"{what} ({' '.join(cmd[:2])}) exited with status "
                       f"{proc.returncode}:\n{proc.stderr[-3000:]}")
  with open(out) as f:
    return json.load(f)


"""The corpus trainer's shape (conv implementation, nets per vmap chunk), chosen per machine.

Which shape trains nets fastest depends on the machine: on one 2-core Intel CPU im2col with
one net per chunk was fastest, on an AVX2-only AMD CPU the same shape was several times
slower than there. So the corpus config says ``conv_impl="auto"`` and ``nets_per_chunk=0``
(auto) by default, and ``resolve`` turns a trainer config into a concrete ``TrainerShape``:

* a value the config forces is used as it is (nothing is timed for it);
* else the value the corpus being resumed recorded (its meta.json), so that a corpus is
  finished with the shape it was started with;
* else ``calibrate``: each candidate (``CONV_IMPLS`` x ``CPU_CHUNKS`` on a CPU,
  ``ACCELERATOR_CHUNKS`` on GPU/TPU) trains a few steps of the real net at the real batch on
  the real mesh; the fastest in net-steps/s (counting the padding its shard size would add)
  wins. Compilation is done ahead and left out of the timing (it is logged), and the timed
  calls share a budget of a few seconds. The table and the choice are logged, and each
  candidate's rate is cached per machine and workload (``cache_path``), so a second run on
  the same machine times nothing.

``resolve`` is the one place a trainer config becomes a shape: the corpus run, the
benchmarks and every evaluator that reads a corpus's trainer go through it.
"""
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from t2w_jax import io as io_lib
from t2w_jax import platform
from t2w_jax.errors import ConfigError

AUTO_CONV = "auto"
AUTO_CHUNK = 0
CONV_IMPLS = ("im2col", "lax")
CPU_CHUNKS = (1, 2, 4, 8)
ACCELERATOR_CHUNKS = (64, 128, 256, 512)
# Seconds of timed calls the whole calibration may spend (compilation not counted).
BUDGET_SECONDS = 4.0
# Each timed call trains about this many net-steps per device (at least MIN_STEPS steps).
NET_STEPS_PER_DEVICE = 64
MIN_STEPS = 4
# Timed calls per candidate at most (the fastest is kept).
MAX_TIMED_CALLS = 5
# Bumped when what is timed changes, so that older cached rates are not reused.
PROTOCOL = 1
CACHE_ENV = "T2W_JAX_CACHE_DIR"
CACHE_FILE = "trainer_shape.json"


@dataclasses.dataclass(frozen=True)
class TrainerShape:
  """How the corpus trainer lays out its nets: a concrete conv and vmap chunk."""
  conv_impl: str
  nets_per_chunk: int

  @property
  def label(self) -> str:
    return f"{self.conv_impl}/{self.nets_per_chunk}"


def _check(conv_impl, nets_per_chunk) -> None:
  if conv_impl not in CONV_IMPLS + (AUTO_CONV,):
    raise ConfigError(f"trainer.conv_impl={conv_impl!r} is invalid: use 'auto', 'im2col' or "
                      "'lax' (--config.trainer.conv_impl=...)")
  if (not isinstance(nets_per_chunk, (int, np.integer)) or isinstance(nets_per_chunk, bool)
      or nets_per_chunk < 0):
    raise ConfigError(f"trainer.nets_per_chunk={nets_per_chunk!r} is invalid: a whole number "
                      ">= 1, or 0 for auto (--config.trainer.nets_per_chunk=...)")


def resolve(trainer: Mapping, *, recorded: Mapping | None = None,
            calibrate: Callable[..., TrainerShape] | None = None,
            where: str = "the corpus") -> TrainerShape:
  """The concrete trainer shape of a trainer config: the one place it is decided.

  Args:
    trainer: a corpus config's ``trainer`` (or a corpus meta's): ``conv_impl`` ("auto",
      "im2col" or "lax") and ``nets_per_chunk`` (0: auto).
    recorded: the trainer settings a corpus being resumed was built with (its meta's
      ``trainer``), or None. An auto value takes the recorded one.
    calibrate: ``calibrate(conv_impl=..., nets_per_chunk=...) -> TrainerShape``, each
      argument the forced value or None (to be chosen); called only when a value is
      neither forced nor recorded. None: such a value is an error.
    where: names the recorded corpus in messages.

  Returns:
    The TrainerShape.

  Raises:
    ConfigError: an invalid value; a forced value other than the recorded one (the corpus
      is finished with the shape it was started with); an auto value with nothing to
      resolve it.
  """
  conv, chunk = trainer["conv_impl"], trainer["nets_per_chunk"]
  _check(conv, chunk)
  if recorded is not None:
    rec_conv, rec_chunk = recorded["conv_impl"], int(recorded["nets_per_chunk"])
    for key, value, rec, auto in (("conv_impl", conv, rec_conv, AUTO_CONV),
                                  ("nets_per_chunk", chunk, rec_chunk, AUTO_CHUNK)):
      if value != auto and value != rec:
        raise ConfigError(
            f"trainer.{key}={value!r}, but {where} was built with {rec!r}: a corpus is "
            f"finished with the shape it was started with (its bytes depend on it); resume "
            f"with --config.trainer.{key}={auto!r} (reuse the recorded one) or {rec!r}, "
            "or use another --workdir")
    conv = rec_conv if conv == AUTO_CONV else conv
    chunk = rec_chunk if chunk == AUTO_CHUNK else chunk
  if conv != AUTO_CONV and chunk != AUTO_CHUNK:
    return TrainerShape(conv, int(chunk))
  if calibrate is None:
    raise ConfigError(f"trainer shape conv_impl={conv!r}, nets_per_chunk={chunk!r} is not "
                      "resolved here: give both values (or build the corpus, which "
                      "calibrates and records them)")
  shape = calibrate(conv_impl=None if conv == AUTO_CONV else conv,
                    nets_per_chunk=None if chunk == AUTO_CHUNK else int(chunk))
  _check(shape.conv_impl, shape.nets_per_chunk)
  return shape


def with_shape(trainer: Mapping, shape: TrainerShape) -> dict:
  """A trainer config's dict with the resolved shape in place of auto values."""
  return dict(trainer, conv_impl=shape.conv_impl, nets_per_chunk=shape.nets_per_chunk)


# ------------------------------------------------------------------ what is timed
@dataclasses.dataclass(frozen=True)
class Workload:
  """What one train step of one net works on: the calibration's unit, part of its cache key.

  Attributes:
    model: the corpus config's ``model`` as a dict (family, widths, ...).
    embed_dim: the text space's dimension.
    example_shape: one training example's shape ((H, W, 3) images; (d_f,) features).
    example_dtype: "uint8" (images) or "float32" (an adapter's features).
    train_rows: training examples (the gathered array's size).
    num_classes: classes of the dataset.
    batch_size / learning_rate / max_classes: the trainer's batch, rate and class padding.
  """
  model: dict
  embed_dim: int
  example_shape: tuple
  example_dtype: str
  train_rows: int
  num_classes: int
  batch_size: int
  learning_rate: float
  max_classes: int

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    return json.loads(json.dumps(d))


def candidates(backend: str, has_conv: bool, conv_impl: str | None = None,
               nets_per_chunk: int | None = None) -> list[TrainerShape]:
  """The shapes to time: forced values fixed, the others over their candidate sets.

  A family without a convolution (the adapter) has nothing to choose in ``conv_impl``: it is
  fixed to "lax" (what ``family.build_subtask_net`` builds by default) unless forced.
  """
  convs = ([conv_impl] if conv_impl else list(CONV_IMPLS) if has_conv else ["lax"])
  chunks = ([nets_per_chunk] if nets_per_chunk else
            list(CPU_CHUNKS if backend == "cpu" else ACCELERATOR_CHUNKS))
  return [TrainerShape(c, n) for c in convs for n in chunks]


def machine_key() -> dict:
  """What a cached rate is valid for, besides the workload: CPU, cores, JAX, backend,
  devices, XLA_FLAGS."""
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  devices = jax.local_devices()
  return {"cpu": platform.cpu_model(), "cpu_cores": os.cpu_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
          "device_kind": devices[0].device_kind if devices else "none",
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def cache_key(machine: Mapping, workload: Workload, devices: int) -> dict:
  """The full key of a cached calibration: machine, mesh size, workload, protocol."""
  return {"machine": dict(machine), "devices": int(devices), "workload": workload.to_json(),
          "protocol": PROTOCOL}


def _digest(key: Mapping) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------ the cache
def cache_path() -> str:
  """``$T2W_JAX_CACHE_DIR/trainer_shape.json``, else under ``$XDG_CACHE_HOME/t2w_jax`` or
  ``~/.cache/t2w_jax``."""
  root = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "t2w_jax")
  return os.path.join(root, CACHE_FILE)


def load_cache(path: str) -> dict:
  """The cache's entries ``{digest: {"key", "rates"}}``; {} when it is missing, and {} with a
  warning when it cannot be read or is not a cache (it is then rewritten on the next save)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      data = json.load(f)
    entries = data["entries"]
    if not isinstance(entries, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("rates"), dict) for e in entries.values()):
      raise ValueError("entries are not calibrations")
    return entries
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("trainer shape: ignoring the unreadable calibration cache %s (%s: %s); "
                    "calibrating anew", path, type(e).__name__, e)
    return {}


def save_rates(path: str, key: Mapping, rates: Mapping[str, dict]) -> None:
  """Merges ``rates`` ({shape label: measurement}) into the cache entry of ``key``
  (atomically; an unwritable cache is a warning, not an error)."""
  entries = load_cache(path)
  digest = _digest(key)
  entry = entries.get(digest) or {"key": dict(key), "rates": {}}
  entry["rates"].update(rates)
  entry["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  entries[digest] = entry
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io_lib.atomic_write_json(path, {"version": 1, "entries": entries})
  except OSError as e:
    logging.warning("trainer shape: could not write the calibration cache %s: %s", path, e)


# ------------------------------------------------------------------ timing
def time_candidate(workload: Workload, shape: TrainerShape, mesh, budget_s: float,
                   clock: Callable[[], float] = time.perf_counter) -> dict:
  """Trains a few steps of ``workload``'s net laid out as ``shape`` and times them.

  Each device gets one chunk (``nets_per_chunk`` nets) on synthetic data of the workload's
  shape (speed does not depend on the values); the program is compiled ahead (its seconds
  are reported, not counted), then timed up to MAX_TIMED_CALLS times within ``budget_s``
  (at least once); the fastest call counts.

  Args:
    workload: the net and batch.
    shape: the candidate.
    mesh: the 1-D ``nets`` mesh the corpus trains on.
    budget_s: seconds this candidate's timed calls may take.
    clock: the time source.

  Returns:
    {"net_steps_per_s", "compile_seconds", "calls", "nets", "steps"}.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from t2w_jax.data.types import ImageDataset  # pylint: disable=import-outside-toplevel
  from t2w_jax.zoo import family as family_lib  # pylint: disable=import-outside-toplevel
  from t2w_jax.zoo import masstrain  # pylint: disable=import-outside-toplevel
  from t2w_jax.zoo.cnn import init_params  # pylint: disable=import-outside-toplevel

  w = workload
  model = family_lib.build_subtask_net(w.model, w.embed_dim, shape.conv_impl)
  nets = shape.nets_per_chunk * mesh.size
  steps = max(MIN_STEPS, math.ceil(NET_STEPS_PER_DEVICE / shape.nets_per_chunk))
  spec = masstrain.TrainerSpec(steps=steps, batch_size=w.batch_size,
                               learning_rate=w.learning_rate,
                               nets_per_chunk=shape.nets_per_chunk, eval_per_class=1)
  rng = np.random.default_rng(0)
  labels = np.arange(w.train_rows, dtype=np.int32) % w.num_classes
  shape_n = (w.train_rows,) + tuple(w.example_shape)
  x = (rng.integers(0, 256, shape_n, dtype=np.uint8) if w.example_dtype == "uint8"
       else rng.standard_normal(shape_n).astype(np.float32))
  names = tuple(f"c{i}" for i in range(w.num_classes))
  kind = ImageDataset if w.example_dtype == "uint8" else family_lib.FeatureDataset
  dataset = kind("calibration", names, x, labels, x[:w.num_classes], labels[:w.num_classes])
  emb = rng.standard_normal((w.num_classes, w.embed_dim)).astype(np.float32)
  data = masstrain.put_data(dataset, emb, 1, mesh)
  image_size = int(w.example_shape[0])
  base = jax.device_put(jax.jit(lambda k: init_params(model, k, image_size))(
      jax.random.PRNGKey(0)), NamedSharding(mesh, P()))
  k = w.max_classes
  classes = (np.arange(nets * k, dtype=np.int32) % w.num_classes).reshape(nets, k)
  tasks = masstrain.TaskBatch(
      *[jax.device_put(a, NamedSharding(mesh, P("nets"))) for a in
        (classes, np.ones((nets, k), bool), np.arange(nets, dtype=np.uint32))])
  start = clock()
  run = masstrain.make_step_runner(model, spec, mesh).lower(data, base, tasks).compile()
  compile_s = clock() - start
  # No separate warm-up call (compilation is done): the fastest of the calls counts, and a
  # candidate slow enough to get one call only within its budget is not the winner.
  times, spent = [], 0.0
  while not times or (len(times) < MAX_TIMED_CALLS and spent < budget_s):
    t0 = clock()
    jax.block_until_ready(run(data, base, tasks))
    times.append(clock() - t0)
    spent += times[-1]
  best = max(min(times), 1e-9)
  return {"net_steps_per_s": nets * steps / best, "compile_seconds": compile_s,
          "calls": len(times), "nets": nets, "steps": steps}


def useful_fraction(nets_per_chunk: int, devices: int, num_nets: int | None,
                    shard_size: int | None) -> float:
  """The fraction of trained nets that are the corpus's own: shards are whole multiples of
  ``nets_per_chunk x devices`` and the last one is padded (``nets_per_shard``)."""
  if not num_nets or not shard_size:
    return 1.0
  shard = nets_per_shard(shard_size, nets_per_chunk * devices)
  return num_nets / (math.ceil(num_nets / shard) * shard)


def nets_per_shard(shard_size: int, unit: int) -> int:
  """Nets per shard: ``shard_size`` rounded up to a multiple of ``unit`` (nets per chunk x
  devices), at least one unit."""
  return max(unit, math.ceil(shard_size / unit) * unit)


def calibrate(workload: Workload, mesh, *, conv_impl: str | None = None,
              nets_per_chunk: int | None = None, num_nets: int | None = None,
              shard_size: int | None = None, path: str | None = None,
              budget_s: float = BUDGET_SECONDS,
              timer: Callable[..., dict] | None = None) -> TrainerShape:
  """Chooses the fastest trainer shape for ``workload`` on this machine (module docstring).

  Args:
    workload: the net and batch.
    mesh: the 1-D ``nets`` mesh the corpus trains on.
    conv_impl / nets_per_chunk: a forced value (not chosen), or None.
    num_nets / shard_size: the corpus's nets and shard size, to count each candidate's
      padding (None: no padding counted).
    path: the cache file (None: ``cache_path()``).
    budget_s: seconds of timed calls for all candidates together.
    timer: ``timer(workload, shape, mesh, budget_s) -> {"net_steps_per_s", ...}`` (None:
      ``time_candidate``).

  Returns:
    The chosen TrainerShape.
  """
  import jax  # pylint: disable=import-outside-toplevel
  path = path or cache_path()
  timer = timer or time_candidate
  has_conv = "widths" in workload.model and workload.model.get("family", "cnn") != "adapter"
  cands = candidates(jax.default_backend(), has_conv, conv_impl, nets_per_chunk)
  if len(cands) == 1:
    return cands[0]
  key = cache_key(machine_key(), workload, mesh.size)
  cached = (load_cache(path).get(_digest(key)) or {}).get("rates", {})
  todo = [c for c in cands if c.label not in cached]
  fresh = {c.label: timer(workload, c, mesh, budget_s / len(todo)) for c in todo}
  if fresh:
    save_rates(path, key, fresh)
  rows, best, best_rate = [], None, -1.0
  for c in cands:
    m = fresh.get(c.label) or cached[c.label]
    rate = m["net_steps_per_s"] * useful_fraction(c.nets_per_chunk, mesh.size, num_nets,
                                                  shard_size)
    rows.append((c, m, rate))
    if rate > best_rate:
      best, best_rate = c, rate
  lines = [f"  {c.conv_impl:>6} x {c.nets_per_chunk:>3} nets/chunk: "
           f"{m['net_steps_per_s']:9.1f} net-steps/s"
           + (f" ({rate:.1f} with shard padding)" if rate != m["net_steps_per_s"] else "")
           + (f", compile {m['compile_seconds']:.1f} s" if c.label in fresh else ", cached")
           for c, m, rate in rows]
  logging.info("trainer shape calibration on %d device(s) (%s; %s):\n%s\nchosen: conv_impl=%r, "
               "nets_per_chunk=%d", mesh.size, key["machine"]["cpu"], path, "\n".join(lines),
               best.conv_impl, best.nets_per_chunk)
  return best


def describe(shape: TrainerShape, how: str) -> str:
  """One log line: the shape and where it came from ("config", "corpus", "calibrated")."""
  return (f"trainer shape: conv_impl={shape.conv_impl!r}, nets_per_chunk="
          f"{shape.nets_per_chunk} ({how})")


def source_of(trainer: Mapping, recorded: Mapping | None) -> str:
  """Where ``resolve`` takes the shape from: "config", "corpus" or "calibrated" (a mix is
  named by its least fixed part)."""
  auto = [k for k, a in (("conv_impl", AUTO_CONV), ("nets_per_chunk", AUTO_CHUNK))
          if trainer[k] == a]
  if not auto:
    return "config"
  return "corpus" if recorded is not None else "calibrated, or read from the cache"


def workload_of(model: Mapping, embed_dim: int, dataset: Any, trainer: Mapping,
                max_classes: int) -> Workload:
  """The Workload of a corpus: its net, the example shape and size its nets train on, its
  trainer.

  Args:
    model: the corpus config's ``model``.
    embed_dim: the text space's dimension.
    dataset: the image dataset (for the adapter family, whose nets train on the trunk's
      features, the features' shape is taken from ``model`` instead of the images').
    trainer: the corpus config's ``trainer``.
    max_classes: the class padding of tasks.
  """
  model = json.loads(json.dumps(model.to_dict() if hasattr(model, "to_dict") else dict(model)))
  x = dataset.train_images
  example_shape, dtype = tuple(int(v) for v in x.shape[1:]), str(np.dtype(x.dtype))
  if model.get("family", "cnn") == "adapter":
    example_shape, dtype = (int(tuple(model["trunk_widths"])[-1]),), "float32"
  return Workload(model=model, embed_dim=int(embed_dim), example_shape=example_shape,
                  example_dtype=dtype, train_rows=int(x.shape[0]),
                  num_classes=int(len(dataset.class_names)),
                  batch_size=int(trainer["batch_size"]),
                  learning_rate=float(trainer["learning_rate"]), max_classes=int(max_classes))

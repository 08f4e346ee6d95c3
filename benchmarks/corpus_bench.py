"""Benchmark of the en-masse corpus trainer against a plain per-net loop.

One run of ``python launch/bench.py corpus`` measures, on the same data, tasks, batch size,
steps per net and image size:

(a) the en-masse trainer (``zoo.masstrain.make_trainer``) as the corpus run uses it: the
    corpus config's ``conv_impl`` and ``nets_per_chunk``, the nets sharded over every local
    device; the launch script sets ``platform.setup_host_devices()`` first, which on a CPU
    host gives one single-threaded XLA device per core;
(b) a plain per-net loop: one net at a time, one jitted train step per Python iteration,
    ``lax.conv``, default XLA threading on one device. The host-device flags change XLA's
    threading, so this runs in a subprocess started without them
    (``python -m benchmarks.corpus_bench --baseline``), which writes its results as JSON;
(c) the FLOP rates of both against an n x n x n float32 matmul measured in each process's
    own device set-up (and in bfloat16 too on accelerators).

Both sides do the same work per net: ``steps`` Adam steps on balanced batches drawn with the
same keys, then the test accuracy of the base net and of the trained net (the trainer always
measures both). The per-net loop's figure is reported with and without that evaluation.

FLOPs come from XLA's cost analysis of one net's single train step and one accuracy
evaluation, compiled on their own, scaled by steps and nets. The whole trainer is not
analysed directly: XLA counts the body of a ``lax.scan`` / ``lax.map`` once, not per
iteration. The text embeddings are random unit vectors of MiniLM's dimension: the timing
does not depend on their values, and the text encoder need not be loaded.
"""
import argparse
import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import harness
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.data.types import ImageDataset
from t2w_jax.errors import ConfigError, MissingError
from t2w_jax.zoo import masstrain
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import trainer_shape
from t2w_jax.zoo.cnn import SubtaskCNN, init_params

# MiniLM's embedding size: the corpus config's default text space.
DEFAULT_EMBED_DIM = 384
# XLA_FLAGS entries written by ``platform.setup_host_devices``; the baseline runs without them.
_HOST_DEVICE_FLAGS = ("--xla_force_host_platform_device_count", "--xla_cpu_multi_thread_eigen",
                      "intra_op_parallelism_threads")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything both sides of the benchmark must agree on (JSON-serialisable).

  Attributes:
    steps / batch_size / learning_rate / eval_per_class: per-net training, as in the corpus
      config's trainer.
    nets_per_chunk / conv_impl: the en-masse trainer's shape (the per-net loop uses lax.conv);
      0 / "auto": resolved as the corpus run resolves them (``zoo/trainer_shape.py``:
      calibrated on this machine, or read from its cache).
    nets: nets per trainer call (0: max(16, 2 x chunk x devices); rounded up to a multiple
      of nets_per_chunk x devices).
    baseline_nets: nets the per-net loop trains per repeat.
    min_classes / max_classes: task sizes; tasks are padded to max_classes.
    widths / strides / logit_scale / embed_dim: the subtask CNN.
    family: the subtask family ("cnn", or "adapter": a bottleneck adapter of width
      ``bottleneck`` on the features of a frozen ``trunk_widths``/``trunk_strides`` CNN,
      computed once; zoo/family.py). Both sides of the benchmark train that family.
    image_size: training resolution.
    data: "shapes" (the embedded dataset via ``data.load_dataset``), "synthetic" (random
      uint8 images) or "auto" (shapes, else synthetic); resolved before the baseline starts.
    dataset / data_dir / dataset_kwargs: what ``load_dataset`` gets for "shapes".
    synthetic_classes / synthetic_train / synthetic_test: synthetic data size (per class).
    num_devices: devices of the trainer's mesh (0: all local devices).
    repeats: timed repeats (medians are reported).
    matmul_size: n of the n x n x n peak matmul (0: 2048 on CPU, 8192 on accelerators).
    seed: tasks, data and initial net.
    eval_every: the trainer's validation checks (early stopping's cost) every this many
      steps, with a patience that never stops a net, so both sides train the same steps;
      0: no checks.
    torch_nets / torch_loop_nets: nets the PyTorch peers train (``torch.func.vmap`` over all
      at once / one at a time); 0: the trainer's nets / ``baseline_nets``.
  """
  steps: int = 150
  batch_size: int = 64
  learning_rate: float = 3e-3
  eval_per_class: int = 100
  nets_per_chunk: int = 8
  conv_impl: str = "im2col"
  nets: int = 0
  baseline_nets: int = 4
  min_classes: int = 8
  max_classes: int = 32
  widths: tuple = (8, 16, 32)
  strides: tuple = (1, 2, 2)
  logit_scale: float = 10.0
  embed_dim: int = DEFAULT_EMBED_DIM
  family: str = "cnn"
  trunk_widths: tuple = (16, 32, 64)
  trunk_strides: tuple = (1, 2, 2)
  bottleneck: int = 16
  image_size: int = 16
  data: str = "auto"
  dataset: str = "shapes"
  data_dir: str | None = None
  dataset_kwargs: dict = dataclasses.field(default_factory=dict)
  synthetic_classes: int = 100
  synthetic_train: int = 500
  synthetic_test: int = 100
  num_devices: int = 0
  repeats: int = 3
  matmul_size: int = 0
  seed: int = 0
  eval_every: int = 0
  torch_nets: int = 0
  torch_loop_nets: int = 0

  def __post_init__(self):
    for name in ("steps", "batch_size", "eval_per_class", "baseline_nets", "image_size",
                 "repeats"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
    for name in ("nets_per_chunk", "torch_nets", "torch_loop_nets"):
      if int(getattr(self, name)) < 0:
        raise ValueError(f"{name} must be >= 0 (0: automatic), got {getattr(self, name)!r}")
    if self.matmul_size < 0:
      raise ValueError(f"matmul_size must be >= 0 (0: automatic), got {self.matmul_size}")
    if self.data not in ("auto", "shapes", "synthetic"):
      raise ValueError(f"data must be 'auto', 'shapes' or 'synthetic', got {self.data!r}")
    if self.conv_impl not in trainer_shape.CONV_IMPLS + (trainer_shape.AUTO_CONV,):
      raise ValueError(f"conv_impl must be 'auto', 'im2col' or 'lax', got {self.conv_impl!r}")
    if self.family not in family_lib.FAMILIES:
      raise ValueError(f"family must be one of {family_lib.FAMILIES}, got {self.family!r}")
    for name in ("widths", "strides", "trunk_widths", "trunk_strides"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

  def model_config(self) -> dict:
    """The subtask net as a corpus config's ``model`` (``family.build_subtask_net``)."""
    return dict(family=self.family, widths=self.widths, strides=self.strides,
                trunk_widths=self.trunk_widths, trunk_strides=self.trunk_strides,
                bottleneck=self.bottleneck, logit_scale=self.logit_scale)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Settings":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise KeyError(f"unknown corpus bench settings {unknown}; known: {sorted(known)}")
    return cls(**d)


def settings_from_config(config, *, quick: bool = False, **overrides) -> Settings:
  """Benchmark settings from a configs/corpus.py ConfigDict.

  Args:
    config: the corpus config (its trainer, model, image size, task sizes, dataset).
    quick: tiny sizes and one repeat, for smoke tests (synthetic data).
    **overrides: Settings fields to replace; None values are ignored.

  Returns:
    Settings.
  """
  t, m = config.trainer, config.model
  s = dict(
      steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
      eval_per_class=t.eval_per_class, nets_per_chunk=t.nets_per_chunk,
      conv_impl=t.conv_impl, min_classes=config.min_classes, max_classes=config.max_classes,
      family=family_lib.family_of(m), logit_scale=float(m.logit_scale),
      **{k: tuple(m[k]) for k in ("widths", "strides", "trunk_widths", "trunk_strides")
         if k in m},
      **({"bottleneck": int(m.bottleneck)} if "bottleneck" in m else {}),
      image_size=config.image_size, dataset=config.dataset, data_dir=config.data_dir,
      dataset_kwargs=config.dataset_kwargs.to_dict(), num_devices=config.num_devices,
      seed=config.seed)
  if quick:
    s.update(steps=4, batch_size=16, eval_per_class=4, nets_per_chunk=2, conv_impl="im2col",
             baseline_nets=1,
             min_classes=3, max_classes=6, data="synthetic", synthetic_classes=10,
             synthetic_train=16, synthetic_test=8, repeats=1, matmul_size=256)
  s.update({k: v for k, v in overrides.items() if v is not None})
  return Settings(**s)


# ----------------------------------------------------------------------------------------
# Shared pieces: data, tasks, model, the per-net train step.


def synthetic_dataset(num_classes: int, train_per_class: int, test_per_class: int,
                      image_size: int, seed: int = 0) -> ImageDataset:
  """Random uint8 images with balanced labels (same shapes as the real data)."""
  rng = np.random.default_rng([seed, 17])

  def split(per):
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per)
    images = rng.integers(0, 256, (labels.size, image_size, image_size, 3), dtype=np.uint8)
    return images, labels

  (tr_x, tr_y), (te_x, te_y) = split(train_per_class), split(test_per_class)
  return ImageDataset("synthetic", tuple(f"class {i}" for i in range(num_classes)),
                      tr_x, tr_y, te_x, te_y)


def load_data(s: Settings) -> tuple[ImageDataset, str]:
  """The benchmark's dataset and its source ("shapes" or "synthetic")."""
  if s.data in ("shapes", "auto"):
    from t2w_jax import data as data_lib
    try:
      ds = data_lib.load_dataset(s.dataset, data_dir=s.data_dir, image_size=s.image_size,
                                 **s.dataset_kwargs)
      return ds, "shapes"
    except Exception as e:  # pylint: disable=broad-except
      if s.data == "shapes":
        raise
      logging.warning("dataset %r unavailable (%s); using synthetic images", s.dataset, e)
  ds = synthetic_dataset(s.synthetic_classes, s.synthetic_train, s.synthetic_test,
                         s.image_size, s.seed)
  return ds, "synthetic"


def class_embeddings(num_classes: int, dim: int, seed: int) -> np.ndarray:
  """Random unit vectors standing in for the text embeddings (values do not affect speed)."""
  e = np.random.default_rng([seed, 23]).standard_normal((num_classes, dim)).astype(np.float32)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def make_tasks(s: Settings, num_classes: int, n: int) -> masstrain.TaskBatch:
  """n seeded tasks (the corpus's seen-task sampler), padded to max_classes."""
  plan = tasks_lib.make_plan(num_classes, num_seen=n, num_unseen=0, num_heldout=0,
                             min_classes=s.min_classes, max_classes=s.max_classes,
                             seed=s.seed)
  ids, mask = tasks_lib.pad_tasks(plan.tasks, s.max_classes)
  return masstrain.TaskBatch(ids, mask, np.array([t.seed for t in plan.tasks], np.uint32))


def make_model(s: Settings, conv_impl: str):
  """The subtask net of the settings' family (a SubtaskCNN or an AdapterNet)."""
  return family_lib.build_subtask_net(s.model_config(), s.embed_dim, conv_impl)


def task_data(s: Settings, dataset: ImageDataset):
  """What the family's nets train on, and the seconds it took to make.

  The CNN family trains on the images themselves (0 s). The adapter family trains on the
  pooled features of a frozen trunk, computed once for every train and test image
  (``family.feature_dataset``); the trunk here is a seeded initialisation, since the
  time of its forward pass does not depend on its values. Training it is a one-off cost
  like the CNN family's generalist, and is not part of this figure.
  """
  if s.family != "adapter":
    return dataset, 0.0
  trunk = family_lib.build_trunk(s.model_config(), s.embed_dim)
  params = jax.jit(lambda key: init_params(trunk, key, s.image_size))(
      jax.random.PRNGKey(s.seed))
  start = time.perf_counter()
  features = family_lib.feature_dataset(dataset, trunk, params)
  return features, time.perf_counter() - start


def init_base(model: SubtaskCNN, s: Settings):
  """The nets' starting point: the CNN's initial params (jitted: eager init is slow)."""
  return jax.jit(lambda key: init_params(model, key, s.image_size))(jax.random.PRNGKey(s.seed))


def trainer_spec(s: Settings) -> masstrain.TrainerSpec:
  return masstrain.TrainerSpec(steps=s.steps, batch_size=s.batch_size,
                               learning_rate=s.learning_rate,
                               nets_per_chunk=s.nets_per_chunk,
                               eval_per_class=s.eval_per_class, eval_every=s.eval_every,
                               patience=max(s.steps // max(s.eval_every, 1), 1) + 1)


def make_step(model: SubtaskCNN, spec: masstrain.TrainerSpec):
  """One net's train step, the same computation as one iteration of the trainer's scan.

  Returns:
    (optimizer, step) with ``step(data, params, opt_state, classes, mask, key) ->
    (params, opt_state, loss)``: ``masstrain.train_step_fn`` with the data as an argument
    (not a closed-over constant), so that one jitted step serves every net.
  """
  def step(data, params, opt_state, classes, mask, key):
    fn = masstrain.train_step_fn(model, spec, data, classes, mask)
    (params, opt_state), loss = fn((params, opt_state), key)
    return params, opt_state, loss

  return masstrain.optimizer(spec), step


def embed_flops(model: SubtaskCNN, params, num_images: int, example) -> float:
  """XLA cost-analysis FLOPs of embedding ``num_images`` examples in one batch.

  Accuracy evaluations run as a ``lax.map`` over class rows, whose body XLA's cost analysis
  counts once; the same images in one batch give the executed count.

  Args:
    model / params: the subtask net.
    num_images: examples in the batch.
    example: an array of examples (images, or an adapter's features): its per-example
      shape and dtype.
  """
  x = jax.ShapeDtypeStruct((num_images,) + tuple(example.shape[1:]), example.dtype)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="embed"))
  return harness.xla_flops(fn.lower(params, x).compile())


def per_net_flops(model: SubtaskCNN, spec: masstrain.TrainerSpec, data, base_params,
                  tasks: masstrain.TaskBatch) -> tuple[float, float]:
  """XLA cost-analysis FLOPs of one net's train step and of one accuracy evaluation.

  An evaluation embeds a task's K (padded) x eval_per_class test images; the cosine head
  over K classes is a few hundred times cheaper and is left out.
  """
  tx, step = make_step(model, spec)
  key = jax.random.PRNGKey(0)
  args = (data, base_params, tx.init(base_params), tasks.classes[0], tasks.mask[0], key)
  step_flops = harness.xla_flops(jax.jit(step).lower(*args).compile())
  k, per = tasks.classes.shape[1], data.test_index.shape[1]
  return step_flops, embed_flops(model, base_params, k * per, data.test_images)


# ----------------------------------------------------------------------------------------
# (b) The per-net loop (run in its own process, default threading).


def run_baseline(s: Settings) -> dict:
  """Trains ``s.baseline_nets`` nets one at a time with a jitted single step; lax.conv.

  Returns:
    dict: machine, nets, steps, seconds (per repeat: train+eval), train_seconds,
    net_steps_per_s (with the two evaluations per net), train_only_net_steps_per_s,
    flops_per_net_step, eval_flops_per_net, gflops_per_s, matmul (default device).
  """
  dataset, source = load_data(s)
  if source != s.data:
    raise ValueError(f"baseline asked for {s.data!r} data but got {source!r}")
  dataset, _ = task_data(s, dataset)
  model = make_model(s, "lax")
  spec = trainer_spec(s)
  data = masstrain.put_data(dataset, class_embeddings(dataset.num_classes, s.embed_dim, s.seed),
                            spec.eval_per_class)
  base = init_base(model, s)
  tasks = make_tasks(s, dataset.num_classes, s.baseline_nets)
  tx, step_fn = make_step(model, spec)
  step = jax.jit(step_fn)
  acc = jax.jit(functools.partial(masstrain.task_accuracy, model))
  # The trainer's per-step keys: the same batches as the en-masse run of these tasks.
  keys = np.asarray(jax.vmap(lambda sd: masstrain.step_keys(sd, s.steps))(
      jnp.asarray(tasks.seeds)))

  def train_nets(num_steps: int):
    train_s = eval_s = 0.0
    for i in range(s.baseline_nets):
      start = time.perf_counter()
      classes, mask = jnp.asarray(tasks.classes[i]), jnp.asarray(tasks.mask[i])
      params, opt_state = base, tx.init(base)
      for j in range(num_steps):
        params, opt_state, _ = step(data, params, opt_state, classes, mask, keys[i, j])
      jax.block_until_ready(params)
      mid = time.perf_counter()
      jax.block_until_ready((acc(data, base, classes, mask), acc(data, params, classes, mask)))
      train_s += mid - start
      eval_s += time.perf_counter() - mid
    return train_s, eval_s

  train_nets(min(2, s.steps))  # warm-up: compiles the step and the evaluation
  totals, trains = [], []
  for _ in range(s.repeats):
    train_s, eval_s = train_nets(s.steps)
    totals.append(train_s + eval_s)
    trains.append(train_s)
  step_flops, eval_flops = per_net_flops(model, spec, data, base, tasks)
  net_steps = s.baseline_nets * s.steps
  total = harness.median(totals)
  flops = s.baseline_nets * (s.steps * step_flops + 2 * eval_flops)
  return {
      "machine": harness.machine_info(), "data": source, "conv_impl": "lax",
      "nets": s.baseline_nets, "steps": s.steps, "seconds": totals, "train_seconds": trains,
      "seconds_median": total, "net_steps_per_s": net_steps / total,
      "train_only_net_steps_per_s": net_steps / harness.median(trains),
      "flops_per_net_step": step_flops, "eval_flops_per_net": eval_flops,
      "gflops_per_s": flops / total / 1e9,
      "matmul": {"float32": harness.matmul_peak(s.matmul_size or harness.default_matmul_size(),
                                              "float32", s.repeats,
                                              devices=jax.local_devices()[:1])},
  }


def baseline_env(environ=None) -> dict:
  """The environment for the baseline process: host-device flags removed from XLA_FLAGS.

  Also turns off GPU memory preallocation, so that the child never competes with a parent
  that already holds an accelerator's memory.
  """
  env = dict(os.environ if environ is None else environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not any(f.startswith(h) for h in _HOST_DEVICE_FLAGS)]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (harness.ROOT, env.get("PYTHONPATH")) if p)
  return env


def spawn_baseline(s: Settings, timeout: float | None = None) -> dict:
  """Runs ``run_baseline`` in a fresh Python process without the host-device flags.

  Raises:
    RuntimeError: the subprocess failed (its stderr tail is in the message).
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "baseline.json")
    cmd = [sys.executable, "-m", "benchmarks.corpus_bench", "--baseline",
           "--settings", json.dumps(s.to_json()), "--json", out]
    logging.info("per-net baseline: %s", " ".join(cmd[:4]))
    proc = subprocess.run(cmd, env=baseline_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0 or not os.path.exists(out):
      raise RuntimeError(f"baseline subprocess failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-4000:]}")
    with open(out) as f:
      return json.load(f)


# ----------------------------------------------------------------------------------------
# (a) + (c) The en-masse trainer in this process, and the whole report.


def run_trainer(s: Settings, dataset: ImageDataset) -> dict:
  """Times the en-masse trainer over all (or ``num_devices``) local devices.

  ``dataset`` is the image dataset; the adapter family's features are computed from it
  first (``task_data``: ``data_seconds`` in the result, not in the timed calls).
  """
  devices = jax.local_devices()
  devices = devices[:s.num_devices] if s.num_devices else devices
  mesh = masstrain.nets_mesh(devices)
  s = resolve_shape(s, dataset, mesh)
  unit = s.nets_per_chunk * mesh.size
  # At least 16 nets: with one net per chunk, 2 x chunk x devices would be too few to time.
  nets = max(unit, -(-(s.nets or max(2 * unit, 16)) // unit) * unit)
  model = make_model(s, s.conv_impl)
  spec = trainer_spec(s)
  dataset, data_seconds = task_data(s, dataset)
  class_emb = class_embeddings(dataset.num_classes, s.embed_dim, s.seed)
  # With checks, a validation split of eval_per_class images per class, as a corpus has.
  data = masstrain.put_data(dataset, class_emb, spec.eval_per_class, mesh,
                            val_per_class=s.eval_per_class if s.eval_every else 0)
  base1 = init_base(model, s)
  base = jax.device_put(base1, NamedSharding(mesh, P()))
  tasks = make_tasks(s, dataset.num_classes, nets)
  tasks_d = masstrain.TaskBatch(*[jax.device_put(a, NamedSharding(mesh, P("nets")))
                                  for a in tasks])
  train = masstrain.make_trainer(model, spec, mesh)
  start = time.perf_counter()
  compiled = train.lower(data, base, tasks_d).compile()
  compile_s = time.perf_counter() - start
  # No warm-up run beyond compilation: one call trains every net (tens of seconds), and
  # the median of the repeats absorbs any first-call cost. The last call's accuracies are
  # kept (the PyTorch peers are checked against them).
  times = []
  for _ in range(s.repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(data, base, tasks_d))
    times.append(time.perf_counter() - start)
  # FLOPs of one step of one net, on one device with the trainer's conv_impl.
  data1 = masstrain.put_data(dataset, class_emb, spec.eval_per_class)
  step_flops, eval_flops = per_net_flops(model, spec, data1, base1, tasks)
  # The model's FLOPs (lax.conv's count): im2col executes a few more for the same function
  # (its backward pass scatters patch gradients), so this is the fair rate to compare.
  model_step, model_eval = per_net_flops(make_model(s, "lax"), spec, data1, base1, tasks)
  # The trainer measures the shared base net once per device and call, not once per net.
  base_flops = mesh.size * _base_eval_flops(model, data1, base1)
  base_model = mesh.size * _base_eval_flops(make_model(s, "lax"), data1, base1)
  sec = harness.median(times)
  flops = nets * (s.steps * step_flops + eval_flops) + base_flops
  model_flops = nets * (s.steps * model_step + model_eval) + base_model
  return {
      "family": s.family, "devices": mesh.size, "conv_impl": s.conv_impl,
      "nets_per_chunk": s.nets_per_chunk, "nets": nets, "steps": s.steps,
      "data_seconds": data_seconds, "compile_seconds": compile_s, "seconds": times,
      "seconds_median": sec, "net_steps_per_s": nets * s.steps / sec, "nets_per_s": nets / sec,
      "flops_per_net_step": step_flops, "eval_flops_per_net": eval_flops,
      "total_flops": flops, "gflops_per_s": flops / sec / 1e9,
      "model_flops_per_net_step": model_step, "model_gflops_per_s": model_flops / sec / 1e9,
      "nets_per_hour": 3600 * nets / sec,
      "trained_acc": np.asarray(out.trained_acc).tolist(),
      "base_acc": np.asarray(out.base_acc).tolist(),
      "steps_run": np.asarray(out.steps_run).tolist(),
  }


def model_key(s: Settings) -> dict:
  """The subtask net as the corpus config's ``model`` holds it (the calibration cache is
  keyed by it, and shared with the corpus run)."""
  keys = (("trunk_widths", "trunk_strides", "bottleneck") if s.family == "adapter"
          else ("widths", "strides"))
  return dict(family=s.family, logit_scale=s.logit_scale, **{k: getattr(s, k) for k in keys})


def resolve_shape(s: Settings, dataset, mesh) -> Settings:
  """``s`` with its trainer shape resolved as the corpus run resolves it
  (``trainer_shape.resolve``: forced values kept, auto ones calibrated or cached)."""
  trainer = {"conv_impl": s.conv_impl, "nets_per_chunk": s.nets_per_chunk,
             "batch_size": s.batch_size, "learning_rate": s.learning_rate}
  workload = trainer_shape.workload_of(model_key(s), s.embed_dim, dataset, trainer,
                                       s.max_classes)
  shape = trainer_shape.resolve(
      trainer, calibrate=functools.partial(trainer_shape.calibrate, workload, mesh))
  return dataclasses.replace(s, conv_impl=shape.conv_impl, nets_per_chunk=shape.nets_per_chunk)


def _base_eval_flops(model, data, base_params) -> float:
  """FLOPs of embedding every class's test images with the base net (once per call)."""
  return embed_flops(model, base_params, data.test_index.size, data.test_images)


# ----------------------------------------------------------------------------------------
# (d) The PyTorch peers: the same CNN, batches, steps, optimiser and checks, in torch.

TORCH_DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "torch_corpus_driver.py")


def write_peer_inputs(path: str, s: Settings, dataset, class_emb, tasks: masstrain.TaskBatch,
                      nets: int, loop_nets: int) -> None:
  """Writes what ``torch_corpus_driver.py`` trains from into the directory ``path``.

  Every net's batches are drawn here by ``masstrain.draw_batch`` from the trainer's own
  per-step keys, so the peers see the same images and labels at every step as our
  trainer; the start is our base net (``init_base``), the validation and test rows are
  ``masstrain.eval_set``'s.

  Args:
    path: an existing directory.
    s: the settings (resolved).
    dataset: the image dataset.
    class_emb: (C, d) class embeddings (the trainer's).
    tasks: the trainer's tasks; the peers train the first ``max(nets, loop_nets)``.
    nets / loop_nets: nets of the vmap peer / of the per-net loop peer.
  """
  n = max(nets, loop_nets)
  spec = trainer_spec(s)
  data = masstrain.put_data(dataset, class_emb, spec.eval_per_class,
                            val_per_class=s.eval_per_class if s.eval_every else 0)
  classes, mask = jnp.asarray(tasks.classes[:n]), jnp.asarray(tasks.mask[:n])

  def batches(c, m, seed):
    keys = masstrain.step_keys(seed, s.steps)
    return jax.vmap(lambda key: masstrain.draw_batch(s.batch_size, data, c, jnp.sum(m), key))(
        keys)

  rows, labels = jax.jit(jax.vmap(batches))(classes, mask, jnp.asarray(tasks.seeds[:n]))
  sets = {split: jax.jit(jax.vmap(lambda c, m: masstrain.eval_set(data, c, m, split)))(
      classes, mask) for split in ("val", "test")}
  arrays = {
      "images": dataset.train_images, "test_images": dataset.test_images,
      "rows": rows, "labels": labels, "mask": mask,
      "class_emb": np.asarray(class_emb)[np.asarray(classes)],
      "val_rows": sets["val"][0], "val_valid": sets["val"][1],
      "test_rows": sets["test"][0], "test_valid": sets["test"][1]}
  for name, a in arrays.items():
    a = np.asarray(a)
    np.save(os.path.join(path, f"{name}.npy"), a.astype(np.int32) if a.dtype == np.int64 else a)
  base = init_base(make_model(s, "lax"), s)
  flat = {"/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
          for kp, v in jax.tree_util.tree_flatten_with_path(base)[0]}
  np.savez(os.path.join(path, "base.npz"), **flat)
  cfg = {"steps": s.steps, "batch_size": s.batch_size, "learning_rate": s.learning_rate,
         "eval_every": s.eval_every, "patience": trainer_spec(s).patience,
         "widths": list(s.widths), "strides": list(s.strides), "image_size": s.image_size,
         "embed_dim": s.embed_dim, "logit_scale": s.logit_scale, "repeats": s.repeats,
         "vmap_nets": nets, "loop_nets": loop_nets}
  with open(os.path.join(path, "peer.json"), "w") as f:
    json.dump(cfg, f)


def run_torch_peers(s: Settings, dataset, tasks: masstrain.TaskBatch, trainer_nets: int, *,
                    python: str, threads: int, timeout: float | None = None) -> dict:
  """Trains the PyTorch peers in a subprocess run by ``python`` (``torch_corpus_driver``).

  Returns:
    The driver's result: status "ok" (with "vmap" and "loop"), "no_torch" (``python`` has
    no torch), or "skipped" (a family the peers do not reproduce: only the CNN's).

  Raises:
    MissingError: ``python`` cannot be started.
    RuntimeError: the driver crashed or ran past ``timeout`` seconds.
  """
  if s.family != "cnn":
    return {"status": "skipped", "reason": "the PyTorch peers reproduce the CNN family only"}
  nets = s.torch_nets or trainer_nets
  loop_nets = s.torch_loop_nets or s.baseline_nets
  if max(nets, loop_nets) > trainer_nets:
    raise ConfigError(f"the PyTorch peers train the trainer's first nets: torch_nets "
                      f"({nets}) and torch_loop_nets ({loop_nets}) must be <= {trainer_nets}")
  class_emb = class_embeddings(dataset.num_classes, s.embed_dim, s.seed)
  with tempfile.TemporaryDirectory(prefix="t2w_torch_corpus_") as tmp:
    write_peer_inputs(tmp, s, dataset, class_emb, tasks, nets, loop_nets)
    cmd = [python, TORCH_DRIVER, "--inputs", tmp, "--threads", str(threads),
           "--json", os.path.join(tmp, "result.json")]
    result = harness.run_driver(cmd, threads=threads, timeout=timeout,
                                what="the PyTorch peers")
  if result.get("status") not in ("ok", "no_torch"):
    raise RuntimeError(f"the PyTorch peers failed ({result.get('status')}): "
                       f"{result.get('reason')}\n{result.get('traceback', '')}")
  return result


def compare_peers(trainer: dict, peers: dict) -> dict | None:
  """Ours against the PyTorch peers (None unless they ran).

  Returns:
    faster_peer ("vmap" or "loop", by nets/hour), ratio_nets_per_hour (ours / the faster
    peer's), and accuracy: the mean final test accuracy of ours, each peer and the start
    on the nets each peer trained (the first ones of ours: the same tasks).
  """
  if peers.get("status") != "ok":
    return None
  faster = max(("vmap", "loop"), key=lambda k: peers[k]["nets_per_hour"])
  acc = {}
  for k in ("vmap", "loop"):
    n = peers[k]["nets"]
    acc[k] = {"nets": n, "ours": float(np.mean(trainer["trained_acc"][:n])),
              "torch": float(np.mean(peers[k]["trained_acc"])),
              "start": float(np.mean(peers[k]["base_acc"]))}
  return {"faster_peer": faster,
          "ratio_nets_per_hour": trainer["nets_per_hour"] / peers[faster]["nets_per_hour"],
          "accuracy": acc}


FLOPS_METHOD = ("XLA cost analysis of one net's train step and accuracy evaluation, "
                "each compiled alone, x steps x nets, + one evaluation per net (the trainer; "
                "its base net is measured once per device: all test images) or + two (the "
                "per-net loop); not of the whole trainer, since XLA counts a scan/map loop "
                "body once")


def run(s: Settings, baseline_timeout: float | None = None, *, torch_python: str | None = None,
        torch_threads: int | None = None, torch_timeout: float | None = None) -> dict:
  """The whole corpus benchmark: baseline subprocess first, then trainer and matmul here,
  then the PyTorch peers in a subprocess (``run_torch_peers``).

  The baseline runs first, before this process touches an accelerator.

  Args:
    s: the settings.
    baseline_timeout: seconds the per-net loop's subprocess may take.
    torch_python: the Python that runs the PyTorch peers (default: this one; without
      torch there, the report says so and has ours only).
    torch_threads: torch's threads (default: the CPU count).
    torch_timeout: seconds the peers may take.

  Returns:
    JSON-ready results (see ``format_report``).
  """
  dataset, source = load_data(s)
  s = dataclasses.replace(s, data=source)
  baseline = spawn_baseline(s, timeout=baseline_timeout)
  trainer = run_trainer(s, dataset)
  python = harness.check_python(torch_python or sys.executable)
  shaped = dataclasses.replace(s, conv_impl=trainer["conv_impl"],
                               nets_per_chunk=trainer["nets_per_chunk"])
  peers = run_torch_peers(shaped, dataset, make_tasks(s, dataset.num_classes, trainer["nets"]),
                          trainer["nets"], python=python,
                          threads=torch_threads or os.cpu_count() or 1, timeout=torch_timeout)
  # With early-stopping checks, the same trainer without them, in the same run: what the
  # checks cost per net-step.
  no_checks = (run_trainer(dataclasses.replace(s, eval_every=0), dataset) if s.eval_every
               else None)
  # Resolved only now: asking for the backend earlier would open the accelerator in this
  # process while the baseline runs.
  s = dataclasses.replace(s, matmul_size=s.matmul_size or harness.default_matmul_size())
  devices = jax.local_devices()[:trainer["devices"]]
  matmul = {"float32": harness.matmul_peak(s.matmul_size, "float32", s.repeats, devices)}
  if jax.default_backend() != "cpu":
    matmul["bfloat16"] = harness.matmul_peak(s.matmul_size, "bfloat16", s.repeats, devices)
  out = {}
  if no_checks is not None:
    out = {"trainer_without_checks": no_checks,
           "ratio_checks_vs_none": trainer["net_steps_per_s"] / no_checks["net_steps_per_s"]}
  return {
      **out,
      "benchmark": "corpus", "date": harness.utc_now(), "commit": harness.git_commit(harness.ROOT),
      "settings": s.to_json(), "data": source,
      "machine": harness.machine_info(), "trainer": trainer, "baseline": baseline,
      "matmul": matmul, "flops_method": FLOPS_METHOD,
      "peers": peers, "peer_comparison": compare_peers(trainer, peers),
      "ratio": trainer["net_steps_per_s"] / baseline["net_steps_per_s"],
      "ratio_vs_train_only": (trainer["net_steps_per_s"]
                              / baseline["train_only_net_steps_per_s"]),
      "trainer_fraction_of_matmul": trainer["gflops_per_s"] / matmul["float32"]["gflops_per_s"],
      "baseline_fraction_of_matmul": (baseline["gflops_per_s"]
                                      / baseline["matmul"]["float32"]["gflops_per_s"]),
  }


def format_report(r: dict) -> str:
  """The printed report: machine, settings, the table, the ratio."""
  s, t, b, mm = r["settings"], r["trainer"], r["baseline"], r["matmul"]
  m, bm = r["machine"], b["machine"]
  mm_b = b["matmul"]["float32"]
  rows = [
      [f"en-masse trainer ({t['nets']} nets/call)",
       f"{t['devices']} x {m['device_kind']}", t["conv_impl"], t["net_steps_per_s"],
       t["gflops_per_s"], mm["float32"]["gflops_per_s"],
       f"{100 * r['trainer_fraction_of_matmul']:.1f}%"],
      [f"per-net loop, incl. eval ({b['nets']} net{'s' if b['nets'] > 1 else ''})",
       f"{bm['num_devices']} x {bm['device_kind']}", b["conv_impl"], b["net_steps_per_s"],
       b["gflops_per_s"], mm_b["gflops_per_s"],
       f"{100 * r['baseline_fraction_of_matmul']:.1f}%"],
      ["per-net loop, train steps only", "", b["conv_impl"], b["train_only_net_steps_per_s"],
       "", "", ""],
  ]
  if "trainer_without_checks" in r:
    n = r["trainer_without_checks"]
    rows.insert(1, ["en-masse trainer without validation checks", f"{n['devices']} x "
                    f"{m['device_kind']}", n["conv_impl"], n["net_steps_per_s"],
                    n["gflops_per_s"], "", ""])
  lines = [
      "corpus trainer benchmark"
      + (f", {r['date']}, t2w_jax {harness.describe_commit(r['commit'])}" if "date" in r else ""),
      f"machine: {harness.describe_machine(m)}",
      f"baseline process: {harness.describe_machine(bm)}",
      f"work: {s['steps']} steps/net at batch {s['batch_size']}, {s['image_size']}px "
      f"{r['data']} images, tasks of {s['min_classes']}-{s['max_classes']} classes, "
      f"accuracy of base and trained net on <= {s['eval_per_class']} test images/class; "
      f"median of {s['repeats']} repeat(s); trainer compile {t['compile_seconds']:.1f} s",
      "",
      harness.format_table(["run", "devices", "conv", "net-steps/s", "GFLOP/s",
                          f"matmul {s['matmul_size']}^3 f32 GFLOP/s", "of matmul"], rows),
      "",
      f"ratio trainer / per-net loop: {r['ratio']:.2f}x "
      f"({r['ratio_vs_train_only']:.2f}x against the loop's train steps alone)",
  ]
  if "ratio_checks_vs_none" in r:
    lines.append(f"ratio trainer with validation checks every {s['eval_every']} steps / "
                 f"without: {r['ratio_checks_vs_none']:.2f}x (same steps; no net stops)")
  lines += format_peers(r)
  if "bfloat16" in mm:
    lines.append(f"matmul bf16: {mm['bfloat16']['gflops_per_s']:.4g} GFLOP/s "
                 f"(trainer at {100 * t['gflops_per_s'] / mm['bfloat16']['gflops_per_s']:.1f}%)")
  lines.append(f"FLOPs: {r['flops_method']}. Per net step: {t['flops_per_net_step']:.4g} "
               f"executed ({t['conv_impl']}), {b['flops_per_net_step']:.4g} (lax.conv); "
               f"trainer at the lax.conv count: {t['model_gflops_per_s']:.4g} GFLOP/s")
  return "\n".join(lines)


def format_peers(r: dict) -> list[str]:
  """The report's lines on the PyTorch peers (or why there are none)."""
  peers = r.get("peers")
  if not peers:
    return []
  if peers["status"] == "no_torch":
    return ["", f"PyTorch peers: not run, no torch in {peers['python']} ({peers['reason']}); "
            "ours only (--torch_python names a Python with torch)"]
  if peers["status"] != "ok":
    return ["", f"PyTorch peers: {peers['status']}: {peers['reason']}"]
  t, c = r["trainer"], r["peer_comparison"]
  rows = [["ours: en-masse trainer", t["nets"], t["net_steps_per_s"], t["nets_per_hour"],
           ""]]
  for k, label in (("vmap", "torch.func vmap over stacked nets"),
                   ("loop", "torch per-net loop (nn.Module + optim.Adam)")):
    p, a = peers[k], c["accuracy"][k]
    rows.append([label, p["nets"], p["net_steps_per_s"], p["nets_per_hour"],
                 f"{a['torch']:.3f} (ours {a['ours']:.3f}, start {a['start']:.3f})"])
  return ["", f"PyTorch peers (torch {peers['torch_version']}, {peers['threads']} threads; "
          "same CNN, start, batches, steps, Adam + cosine decay and checks):",
          harness.format_table(["run", "nets", "net-steps/s", "nets/hour",
                                "mean final test accuracy"], rows),
          f"ratio ours / the faster peer ({c['faster_peer']}), nets per hour: "
          f"{c['ratio_nets_per_hour']:.2f}x"]


def main(argv=None) -> int:
  """``python -m benchmarks.corpus_bench --baseline --settings JSON --json PATH``."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baseline", action="store_true", required=True,
                      help="run the per-net loop baseline (the only mode of this entry point)")
  parser.add_argument("--settings", required=True, help="Settings as JSON")
  parser.add_argument("--json", required=True, help="where to write the results")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  result = run_baseline(Settings.from_json(json.loads(args.settings)))
  harness.write_json(args.json, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The training loop: corpus → sharded train state → steps → checkpoints.

``train(config, workdir)`` is what ``launch/train.py`` calls. It resumes from the newest
intact checkpoint in ``workdir/checkpoints`` (``t2w_jax.checkpoints``); batches are a pure
function of (seed, step), so a run stopped at step N and resumed reaches the same state as
an uninterrupted run. SIGTERM or SIGINT (``t2w_jax.preempt``) ends the run after the step
in progress, saved; in a run of several processes, a signal to any one ends all of them
after the same step.
"""
import functools
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax import checkpoints as ckpt_lib
from t2w_jax import generator as generator_lib
from t2w_jax import io as io_lib
from t2w_jax import multihost
from t2w_jax import preempt
from t2w_jax import task_loss as task_loss_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.errors import ConfigError
from t2w_jax.train import mesh as mesh_lib
from t2w_jax.train import reporting
from t2w_jax.train import state as state_lib
from t2w_jax.train.step import make_train_step
from t2w_jax.workdir_lock import workdir_lock
from t2w_jax.zoo import corpus as corpus_lib


class CorpusBatches:
  """Seen-split corpus rows with their padded class embeddings, batched by step.

  Args:
    corpus: an opened Corpus.
    max_classes: K, class slots per example.
    batch_size: global batch size.
    seed: batches are drawn from ``default_rng([seed, step])``.
    rows: the corpus rows to draw from (default: the seen split).
  """

  def __init__(self, corpus, max_classes: int, batch_size: int, seed: int, rows=None):
    rows = corpus.indices("seen") if rows is None else rows
    self.weights = np.asarray(corpus.weights[rows], np.float32)
    tasks = [tasks_lib.Task(0, "seen", tuple(corpus.records[i]["class_ids"]), 0) for i in rows]
    self.class_ids, self.mask = tasks_lib.pad_tasks(tasks, max_classes)
    self.class_emb = np.asarray(corpus.class_emb, np.float32)
    self.batch_size = batch_size
    self.seed = seed

  def __len__(self):
    return len(self.weights)

  def __call__(self, step: int) -> dict:
    idx = np.random.default_rng([self.seed, step]).integers(0, len(self), self.batch_size)
    return {"weights": self.weights[idx], "class_ids": self.class_ids[idx],
            "class_emb": self.class_emb[self.class_ids[idx]], "class_mask": self.mask[idx]}


def training_batches(config, corpus) -> CorpusBatches:
  """The batches a run of ``config`` trains on (its ``training_rows``)."""
  return CorpusBatches(corpus, config.max_classes, config.batch_size, config.seed,
                       generator_lib.training_rows(config, corpus))


def open_training_corpus(config, workdir: str):
  return corpus_lib.open_corpus(config.corpus_dir or os.path.join(workdir, "corpus"))


def load_or_make_spec(config, workdir: str, corpus) -> generator_lib.GeneratorSpec:
  """Reads workdir/generator.json when resuming (checking it matches), else writes it."""
  fresh = generator_lib.spec_from_corpus(config, corpus)
  if os.path.exists(os.path.join(workdir, generator_lib.SPEC_FILE)):
    stored = generator_lib.GeneratorSpec.load(workdir)
    ckpt_lib.check_meta(stored.identity(), fresh.identity(),
                        where=os.path.join(workdir, generator_lib.SPEC_FILE))
    return stored
  if multihost.is_primary():  # one writer; the others use the same spec, made alike
    fresh.save(workdir)
  return fresh


# The config keys that size each mesh-sharded logical axis (models/layers.py's
# LOGICAL_AXIS_RULES), named when a mesh does not divide a parameter.
MESH_CONFIG_KEYS = {"heads": ("model.num_heads", "disc.num_heads"),
                    "mlp": ("model.width", "model.mlp_ratio", "disc.width", "disc.mlp_ratio")}


def create_sharded_state(spec, config, mesh):
  """Initialises the TrainState directly into its shardings; returns (state, shardings)."""
  init = functools.partial(state_lib.init_state, spec, config)
  rng = jax.random.PRNGKey(config.seed)
  with mesh_lib.activate(mesh):
    abstract = jax.eval_shape(init, rng)
    mesh_lib.check_divisible(abstract, mesh, config_keys=MESH_CONFIG_KEYS)
    shardings = mesh_lib.state_shardings(abstract, mesh)
    state = jax.jit(lambda r: state_lib.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def compile_step(spec, config, mesh, shardings):
  """The jitted ``step(state, batch, data, stop_votes) -> (state, metrics, stop_signal)``.

  The state is sharded as ``shardings`` (and donated), the batch split over 'data', the
  task loss's images replicated. ``stop_votes`` holds, for each device, the signal its
  process has received (``put_stop_votes``); ``stop_signal`` is their maximum (0: none),
  the same on every process. The agreement rides in the step's own program, so the
  processes of a run learn together that one of them was asked to stop, without a round
  trip of their own.
  """
  train_step = make_train_step(spec, config)

  def step(state, batch, data, stop_votes):
    state, metrics = train_step(state, batch, data)
    return state, metrics, jnp.max(stop_votes)

  return jax.jit(step, in_shardings=(shardings, mesh_lib.batch_sharding(mesh),
                                     mesh_lib.replicated(mesh), mesh_lib.per_device(mesh)),
                 out_shardings=(shardings, None, mesh_lib.replicated(mesh)),
                 donate_argnums=0)


def put_stop_votes(signum: int | None, mesh) -> jax.Array:
  """This process's vote in the step's stop agreement (``compile_step``).

  Args:
    signum: the signal this process has received; None or 0 for none.
    mesh: the step's mesh.

  Returns:
    A global int32 array with one entry per device of the mesh; this process sets the
    entries of its own devices to ``signum``.
  """
  votes = np.full((mesh.devices.size,), signum or 0, np.int32)
  return jax.make_array_from_callback(votes.shape, mesh_lib.per_device(mesh),
                                      lambda idx: votes[idx])


def put_task_images(config, corpus, mesh):
  """The task loss's images (``task_loss.seen_task_images``), replicated over the mesh;
  an empty placeholder when the task loss is off (nothing is loaded)."""
  if config.task_loss_weight <= 0:
    return task_loss_lib.TaskImages(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.int32),
                                    np.zeros((1,), np.int32), np.zeros((1,), np.int32),
                                    np.zeros((1, 1), np.float32), np.ones((2,), np.int32))
  # A dataset generated on first use (tfds) must not be generated by two processes at once.
  with multihost.primary_first("task images"):
    data = task_loss_lib.seen_task_images(corpus, corpus.path)
  sharding = mesh_lib.replicated(mesh)
  # Every process holds the same arrays; a callback builds the global array on any
  # number of hosts.
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx]), data)


def put_batch(batch: dict, mesh) -> dict:
  """Host batch -> global arrays split over 'data' (each process feeds its own rows).

  On several processes each holds the whole global batch (a pure function of the step)
  and places only the rows of its own devices, wherever the mesh puts them.
  """
  sharding = mesh_lib.batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx]), batch)


def train(config, workdir: str, *, stop_after: int | None = None) -> dict:
  """Trains (or resumes) the generator in ``workdir``, holding its writer lock.

  Args:
    config: a configs/dit.py ConfigDict.
    workdir: run directory (checkpoints, generator.json, TensorBoard events).
    stop_after: stop (with a checkpoint) once this step is reached; for tests and for
      splitting a long run.

  Returns:
    Final metrics (floats) and ``steps_per_sec``.

  Raises:
    BusyError: another process writes this workdir (two trainers would race in orbax).
    ConfigError: a mesh that the model's sharded dimensions do not divide, and the like.
    CorruptError: every checkpoint in the workdir is damaged.
    preempt.Preempted: SIGTERM or SIGINT came; the step in progress was finished and saved.
      In a run of several processes, a signal to any of them stops every one, after the
      same step (the step after the one whose agreement first shows it), saved together.
  """
  corpus_dir = config.corpus_dir or os.path.join(workdir, "corpus")
  if not os.path.exists(os.path.join(corpus_dir, "meta.json")):
    corpus_lib.open_corpus(corpus_dir)  # raises MissingError before the workdir is made
  multihost.initialize()
  # Every process of a multi-process run writes the workdir (its checkpoint shards):
  # each holds its own lock, so that a second run is refused process by process.
  with (workdir_lock(workdir, "train", name=multihost.lock_name()),
        preempt.stop_requests() as stop):
    return _train(config, workdir, stop, stop_after=stop_after)


def _train(config, workdir: str, stop: preempt.StopRequests, *,
           stop_after: int | None = None) -> dict:
  io_lib.quiet_orbax_logs()
  os.makedirs(workdir, exist_ok=True)
  corpus = open_training_corpus(config, workdir)
  spec = load_or_make_spec(config, workdir, corpus)
  mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.model)
  if config.batch_size % mesh.shape["data"]:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the data axis "
                      f"({mesh.shape['data']} devices); set --config.batch_size to a "
                      "multiple of it or change --config.mesh.data")
  state, shardings = create_sharded_state(spec, config, mesh)
  # Orbax's checkpoint manager exchanges data between processes through a device
  # collective, the first of the run: a process that compiled the state slower must not
  # be more than the collectives' 30 s late to it.
  multihost.before_first_collective("checkpoints")
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR), spec.identity(),
                               save_every=config.checkpoint_every, keep=config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)  # the newest intact step
  start = int(state.step)
  batches = training_batches(config, corpus)
  logging.info("generator: %d seen nets, %d tokens of %d, mesh %s, steps %d -> %d",
               len(batches), spec.tokenizer.num_tokens, spec.tokenizer.block_size,
               dict(mesh.shape), start, config.num_steps)
  step_fn = compile_step(spec, config, mesh, shardings)
  task_data = put_task_images(config, corpus, mesh)
  writer = reporting.MetricWriter(os.path.join(workdir, "tb") if jax.process_index() == 0
                                  else None)
  progress = reporting.ProgressReporter(config.num_steps, every_secs=15.0)
  end = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
  history, last = [], {}
  # Several processes must stop after the same step (the checkpoint is written by all
  # together): they act on the agreed signal of the step before the one just queued,
  # read one step late so that a step is queued while the host waits for the result.
  # One process acts on its own flag at once.
  agree = jax.process_count() > 1
  no_vote = put_stop_votes(None, mesh)
  stopped_by, agreed = None, None
  with mesh_lib.activate(mesh):
    if start < end:
      step_fn = step_fn.lower(state, put_batch(batches(start), mesh), task_data,
                              no_vote).compile()
      multihost.before_first_collective("train step")
    t0 = time.time()
    for step in range(start, end):
      votes = put_stop_votes(stop.signum, mesh) if stop else no_vote
      state, metrics, stop_signal = step_fn(state, put_batch(batches(step), mesh), task_data,
                                            votes)
      history.append(metrics)
      done = step + 1
      if done % config.log_every == 0 or done == end:
        last = {k: float(np.mean([m[k] for m in history])) for k in history[0]}
        writer.write_scalars(done, last)
        history = []
      progress(done)
      ckpt.save(done, state)
      if agree:
        stopped_by = int(agreed) if agreed is not None else 0
        agreed = stop_signal
      else:
        stopped_by = stop.signum
      if stopped_by:
        break
  ckpt.save(int(state.step), state, force=True)
  ckpt.close()
  writer.close()
  if stopped_by and int(state.step) < end:
    if not stop:
      logging.warning("another process received %s: this one stops with it",
                      signal.Signals(stopped_by).name)
    raise preempt.Preempted(stopped_by, f"after step {int(state.step)} of {end}")
  last["steps_per_sec"] = (end - start) / max(time.time() - t0, 1e-9)
  last["step"] = int(state.step)
  return last

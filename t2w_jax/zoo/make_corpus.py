"""Build a text–weight corpus: dataset → text embeddings → base net → task nets → disk.

``make_corpus(config, workdir)`` is what ``launch/make_corpus.py`` calls. It resumes: the
task plan, the base net and every finished shard are read back instead of recomputed, and
the result equals an uninterrupted run's (same shards, same seeds, same compiled programs).

What a resume refuses (docs/resume.md): a config that differs from the stored one in any
key but ``RESUMABLE_KEYS`` (the whole corpus config is part of the corpus's identity), and a
stored plan.json other than the one the config draws. The trainer's shape (``conv_impl``,
``nets_per_chunk``; "auto" and 0 by default) is resolved once, by calibration on this
machine (``zoo/trainer_shape.py``), and the resolved values are what the corpus records
(in its identity too); a resume reuses them, and refuses a forced value other than them. The config is validated before any
file is written, and one run at a time may write a workdir (``workdir_lock``).

Several processes (``t2w_jax/multihost.py``) build the same corpus as one: process 0 writes
the plan, the embeddings and the generalist, the shards left are dealt round-robin (each
process trains its shards on its own devices and writes them), and process 0 joins them.
A shard's size depends only on the devices per process (``nets_per_shard``, part of the
identity), so a resume on another number of processes is handled; on another number of
devices per process it is refused.
"""
import copy
import functools
import json
import logging
import math
import numbers
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from t2w_jax import data as data_lib
from t2w_jax import io as io_lib
from t2w_jax import multihost
from t2w_jax import preempt
from t2w_jax import text as text_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.errors import ConfigError
from t2w_jax.workdir_lock import workdir_lock
from t2w_jax.weights.layout import ParamLayout
from t2w_jax.zoo import base as base_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain
from t2w_jax.zoo import trainer_shape
from t2w_jax.zoo.cnn import init_params


def build_model(config, embed_dim: int, conv_impl: str | None = None):
  """The subtask net a corpus config describes (``family.build_subtask_net``), with
  ``conv_impl`` or else the config's (which must then be resolved: not "auto")."""
  return family_lib.build_subtask_net(
      config.model, embed_dim, conv_impl or trainer_shape.resolve(config.trainer).conv_impl)


def load_data(config):
  """The dataset of a corpus config at its training resolution."""
  return data_lib.load_dataset(config.dataset, data_dir=config.data_dir,
                               image_size=config.image_size, **config.dataset_kwargs)


# Corpus config keys that may differ on a resume: where the data is read from, which
# devices train the nets (the shard size they imply, ``nets_per_shard``, stays part of the
# identity), and the fallback encoder (the encoder actually used is in the identity).
RESUMABLE_KEYS = ("num_devices", "data_dir", "text_fallback")


def corpus_identity(config) -> dict:
  """The whole corpus config but RESUMABLE_KEYS: a resume must match it key by key.

  Args:
    config: a configs/corpus.py ConfigDict (any keys; new keys join the identity).

  Returns:
    A JSON-ready nested dict.
  """
  d = config.to_dict()
  for k in RESUMABLE_KEYS:
    d.pop(k, None)
  return json.loads(json.dumps(d))


def corpus_meta(config, layout: ParamLayout, encoder_name: str, dataset) -> dict:
  """What identifies a corpus: a reopened directory must match it exactly.

  ``config`` is the whole config (``corpus_identity``); the other keys are what readers
  use. ``model`` holds the family (so a corpus of one family is refused by a config of the
  other) and, for the adapter family, the trunk's shape; the trunk's training settings are
  added for that family only.
  """
  meta = {
      "config": corpus_identity(config),
      "layout": layout.to_json(), "encoder": encoder_name, "template": config.template,
      "dataset": config.dataset, "dataset_kwargs": config.dataset_kwargs.to_dict(),
      "num_classes": len(dataset.class_names),
      "image_size": config.image_size, "model": config.model.to_dict(),
      "trainer": config.trainer.to_dict(), "base": config.base.to_dict(),
      "seed": config.seed, "shard_size": config.shard_size,
      "val_per_class": config.val_per_class,
  }
  if family_lib.family_of(config.model) == "adapter":
    meta["trunk_train"] = config.trunk_train.to_dict()
  return meta


def trainer_spec(config, shape: trainer_shape.TrainerShape | None = None
                 ) -> masstrain.TrainerSpec:
  """The specialists' trainer settings of a corpus config (or of ``{"trainer": a corpus
  meta's trainer}``); ``shape``: the resolved trainer shape (None: the config's, which must
  then be resolved, as a corpus's meta is).
  """
  t = config.trainer
  shape = shape or trainer_shape.resolve(t)
  return masstrain.TrainerSpec(
      steps=t.steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
      nets_per_chunk=shape.nets_per_chunk, eval_per_class=t.eval_per_class,
      eval_every=t.eval_every, patience=t.patience)


def train_generalist(config, model, dataset, class_emb, seen_classes):
  """The corpus config's generalist on ``seen_classes``: (params, GeneralistInfo)."""
  b = config.base
  return base_lib.train_generalist(
      model, dataset.train_images, dataset.train_labels, class_emb, seen_classes,
      max_steps=b.max_steps, batch_size=b.batch_size, learning_rate=b.learning_rate,
      seed=config.seed, val_per_class=config.val_per_class, eval_every=b.eval_every,
      patience=b.patience, lr_drops=b.lr_drops, val_seed=config.seed)


def _plan(config, num_classes: int) -> tasks_lib.TaskPlan:
  return tasks_lib.make_plan(
      num_classes, num_seen=config.num_seen, num_unseen=config.num_unseen,
      num_heldout=config.num_heldout, min_classes=config.min_classes,
      max_classes=config.max_classes, heldout_frac=config.heldout_frac, seed=config.seed)


def _check(ok: bool, key: str, value, need: str) -> None:
  if not ok:
    raise ConfigError(f"corpus config: {key}={value!r} is invalid: {need} "
                      f"(--config.{key}=...)")


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_pos_float(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def validate_config(config) -> None:
  """Refuses a corpus config that cannot give a usable corpus, before anything is written.

  Checks the keys it knows and ignores the others (so new keys need no change here).

  Args:
    config: a configs/corpus.py ConfigDict.

  Raises:
    ConfigError: naming the key, its value and what it must be.
  """
  def get(key, default=None):
    node = config
    for part in key.split("."):
      if node is None or part not in node:
        return default
      node = node[part]
    return node

  for key in ("num_seen", "num_unseen", "num_heldout"):
    v = get(key)
    _check(_is_int(v) and v >= 0, key, v, "a whole number >= 0")
  _check(get("num_seen") + get("num_unseen") + get("num_heldout") >= 1, "num_seen",
         get("num_seen"), "such that the corpus has at least one task (a corpus with no seen "
         "task serves the room sweep, not a generator)")
  lo, hi = get("min_classes"), get("max_classes")
  _check(_is_int(lo) and lo >= 2, "min_classes", lo, "a whole number >= 2")
  _check(_is_int(hi) and hi >= lo, "max_classes", hi, f"a whole number >= min_classes ({lo})")
  frac = get("heldout_frac")
  _check(isinstance(frac, numbers.Real) and 0 <= frac < 1, "heldout_frac", frac,
         "in [0, 1)")
  _check(not (get("num_heldout") and frac == 0), "heldout_frac", frac,
         f"> 0 when num_heldout={get('num_heldout')} > 0 (held-out tasks need held-out classes)")
  # The keys below are checked when present: another model family or trainer may not
  # have them.
  for key in ("image_size", "shard_size", "trainer.steps", "trainer.batch_size",
              "trainer.eval_per_class", "base.batch_size",
              "base.max_steps", "base.eval_every", "base.patience", "val_per_class"):
    v = get(key)
    _check(v is None or (_is_int(v) and v >= 1), key, v, "a whole number >= 1")
  for key in ("base.lr_drops", "trainer.eval_every", "trainer.patience",
              "trainer.nets_per_chunk"):
    v = get(key)
    _check(v is None or (_is_int(v) and v >= 0), key, v, "a whole number >= 0")
  every, steps = get("trainer.eval_every"), get("trainer.steps")
  _check(not every or steps is None or steps % every == 0, "trainer.steps", steps,
         f"a multiple of trainer.eval_every ({every}) when early stopping")
  _check(not every or get("trainer.patience", 1) >= 1, "trainer.patience",
         get("trainer.patience"), ">= 1 when trainer.eval_every > 0")
  for key in ("trainer.learning_rate", "base.learning_rate", "model.logit_scale"):
    v = get(key)
    _check(v is None or _is_pos_float(v), key, v, "a finite number > 0")
  widths, strides = get("model.widths"), get("model.strides")
  if widths is not None:
    _check(len(widths) >= 1 and all(_is_int(w) and w >= 1 for w in widths), "model.widths",
           widths, "one or more whole numbers >= 1")
    _check(strides is None or len(strides) == len(widths), "model.strides", strides,
           f"one stride per width ({len(widths)})")
  impl = get("trainer.conv_impl")
  _check(impl is None or impl in trainer_shape.CONV_IMPLS + (trainer_shape.AUTO_CONV,),
         "trainer.conv_impl", impl, "'auto', 'im2col' or 'lax'")
  n = get("num_devices", 0)
  have = len(jax.local_devices())
  _check(_is_int(n) and 0 <= n <= have, "num_devices", n,
         f"0 (all) or a number of local devices <= {have}")


def validate_plan(config, num_classes: int) -> tasks_lib.TaskPlan:
  """Checks the task settings against the dataset's classes and draws the plan.

  Args:
    config: a configs/corpus.py ConfigDict (already through ``validate_config``).
    num_classes: classes of its dataset.

  Returns:
    The task plan.

  Raises:
    ConfigError: the plan is impossible (more classes per task than there are seen
      classes, no new combination left for unseen tasks, ...).
  """
  held = tasks_lib.heldout_classes(num_classes, config.heldout_frac, config.seed)
  seen = num_classes - len(held)
  for key in ("min_classes", "max_classes"):
    _check(config[key] <= seen, key, config[key],
           f"at most the {seen} seen classes of dataset {config.dataset!r} ({num_classes} "
           f"classes, {len(held)} held out by heldout_frac={config.heldout_frac})")
  try:
    return _plan(config, num_classes)
  except ValueError as e:
    raise ConfigError(f"corpus config: cannot draw the task plan: {e}") from None


def make_corpus(config, workdir: str) -> dict:
  """Builds (or resumes) the corpus in ``workdir/corpus``.

  The config is validated (against the dataset too) before anything is written, and the
  workdir is locked against a second writer.

  Args:
    config: a configs/corpus.py ConfigDict.
    workdir: run directory.

  Returns:
    Summary figures: per split mean base and trained accuracy, gain, nets, seconds
    (accumulated over every attempt), attempts.

  Raises:
    ConfigError: an invalid config, or one other than the stored corpus's.
    BusyError: another process writes this workdir.
    preempt.Preempted: SIGTERM or SIGINT came; the shard in progress (or the generalist)
      was finished and written first.
  """
  start = time.time()
  multihost.initialize()
  validate_config(config)
  # The shard size follows the devices each process trains on; the processes must agree
  # on it (all refuse together here, rather than one refusing the stored meta later).
  multihost.check_same(config.num_devices or len(jax.local_devices()),
                       "the devices each process trains nets on",
                       "give every process as many devices, or set --config.num_devices")
  # A dataset is generated on first use (tfds): process 0 makes it, the others read it.
  with multihost.primary_first("corpus-data"):
    dataset = load_data(config)
  validate_plan(config, len(dataset.class_names))
  with (workdir_lock(workdir, "make_corpus", name=multihost.lock_name()),
        preempt.stop_requests() as stop):
    return _make_corpus(config, workdir, dataset, start, stop)


class _Setup(NamedTuple):
  """What every process of a corpus run works from (``_prepare``)."""
  writer: corpus_lib.CorpusWriter
  layout: ParamLayout
  names: tuple
  model: Any
  mesh: Any               # this process's 1-D nets mesh
  spec: masstrain.TrainerSpec
  shard: int              # nets per shard
  tasks: list             # every task of the plan, in order
  todo: list              # shards left to train
  dataset: Any            # the images, or the adapter family's trunk features
  class_emb: np.ndarray
  base_params: Any        # the generalist: every net's start
  clock: Any              # the _Clock, on process 0 only (None on the others)


def _make_corpus(config, workdir: str, dataset, start: float,
                 stop: preempt.StopRequests) -> dict:
  path = os.path.join(workdir, "corpus")
  os.makedirs(path, exist_ok=True)
  # Process 0 writes (or checks) what every process needs and clears damaged shards; the
  # others then read it all back, so every net starts from the same bytes on any process.
  with multihost.primary_first("corpus-prepared"):
    setup = _prepare(config, path, dataset, start)
  stop.check("after the generalist")
  writer, layout, names, shard, all_tasks, todo, clock = (
      setup.writer, setup.layout, setup.names, setup.shard, setup.tasks, setup.todo,
      setup.clock)
  spec, mesh, base_params = setup.spec, setup.mesh, setup.base_params
  data = masstrain.put_data(setup.dataset, setup.class_emb, spec.eval_per_class, mesh,
                            val_per_class=config.val_per_class, val_seed=config.seed)
  train = masstrain.make_trainer(setup.model, spec, mesh)
  num_shards = int(math.ceil(len(all_tasks) / shard))

  def nets_in(shards):
    return sum(len(all_tasks[i * shard:(i + 1) * shard]) for i in shards)

  # Shards are the unit of work and of resume: those left are dealt round-robin, and each
  # process trains and writes its own. A shard's nets do not depend on the process that
  # trains them, so the corpus is the same for any number of processes.
  mine = todo[jax.process_index()::jax.process_count()]
  done_before = len(all_tasks) - nets_in(todo)
  if jax.process_count() > 1:
    logging.info("process %d of %d trains shards %s (of %d to do)", jax.process_index(),
                 jax.process_count(), mine, len(todo))
    if 0 < len(todo) < jax.process_count():
      logging.warning("%d shard(s) to do for %d processes: some processes have none; a "
                      "smaller --config.shard_size makes more shards", len(todo),
                      jax.process_count())

  bar = tqdm.tqdm(total=done_before + nets_in(mine), unit="net", desc="corpus",
                  initial=done_before, smoothing=0.1, mininterval=2.0)
  train_start, trained = time.time(), 0
  for i in mine:
    chunk = all_tasks[i * shard:(i + 1) * shard]
    padded = chunk + [chunk[-1]] * (shard - len(chunk))  # fixed shape: one compile
    ids, mask = tasks_lib.pad_tasks(padded, config.max_classes)
    seeds = np.array([t.seed for t in padded], np.uint32)
    out = train(data, base_params, masstrain.TaskBatch(ids, mask, seeds))
    weights = np.asarray(jax.vmap(layout.flatten)(out.params))[:len(chunk)]
    base_acc, acc, loss, steps, steps_run = (
        np.asarray(a) for a in (out.base_acc, out.trained_acc, out.final_loss, out.steps,
                                out.steps_run))
    records = [{"task_id": t.task_id, "split": t.split, "classes": [names[c] for c in t.class_ids],
                "class_ids": list(t.class_ids), "seed": t.seed,
                "base_acc": float(base_acc[j]), "trained_acc": float(acc[j]),
                "final_loss": float(loss[j]), "steps": int(steps[j]),
                "steps_run": int(steps_run[j])} for j, t in enumerate(chunk)]
    writer.write_shard(i, weights, records)
    trained += len(chunk)
    if clock is not None:
      clock.save()
    bar.update(len(chunk))
    # A log line per shard as well as the bar: the bar's carriage returns do not survive
    # pipes and filters (scripts/run_default.sh), a line with rate and ETA does.
    rate = trained / (time.time() - train_start)
    left = nets_in(mine) - trained
    logging.info("corpus: %d/%d nets (%.2f nets/s, ETA %.0f s)", done_before + trained,
                 done_before + nets_in(mine), rate, left / rate)
    # Each process stops after its own shard: shards need no agreement between processes.
    if left:
      stop.check(f"after shard {i} ({done_before + trained} of {len(all_tasks)} nets)")
  bar.close()
  summary_path = os.path.join(path, "summary.json")
  multihost.barrier("corpus-shards-written")
  if multihost.is_primary():  # joins the shards and writes the summary
    writer.finalize(num_shards)
    summary = summarize(corpus_lib.open_corpus(path).records)
    with open(os.path.join(path, "generalist.json")) as f:
      summary["generalist"] = json.load(f)
    summary["seconds"], summary["attempts"] = clock.save(), clock.attempts
    # This call's specialist training alone (a resumed run trains only what was left), by
    # all its processes.
    summary["specialists_trained"] = nets_in(todo)
    summary["specialist_seconds"] = time.time() - train_start
    io_lib.atomic_write_json(summary_path, summary)
  multihost.barrier("corpus-finished")
  if not multihost.is_primary():
    with open(summary_path) as f:
      summary = json.load(f)
  return summary


def _prepare(config, path: str, dataset, start: float) -> _Setup:
  """Writes, or reads back and checks, everything the nets are trained from.

  What exists is read and checked, what is missing is made and written: process 0 runs
  this first, the other processes after it, and so find everything on disk.
  """
  primary = multihost.is_primary()
  names = dataset.class_names
  encoder = text_lib.get_encoder_with_fallback(config.text_encoder,
                                               config.get("text_fallback"))
  class_emb = text_lib.EmbeddingCache(encoder, template=config.template).get(names)
  logging.info("dataset %s: %d classes, %d train images at %dpx; text %s (d=%d)",
               config.dataset, len(names), len(dataset.train_labels), config.image_size,
               encoder.name, encoder.dim)

  devices = jax.local_devices()
  mesh = masstrain.nets_mesh(devices[:config.num_devices] if config.num_devices else devices)
  # The trainer's shape: forced by the config, recorded by the corpus being resumed, or
  # calibrated here; the corpus records it (in its config and trainer) and keeps it.
  shape, config = _resolve_shape(config, path, encoder.dim, dataset, mesh)
  model = build_model(config, encoder.dim)
  layout = ParamLayout.from_params(init_params(model, jax.random.PRNGKey(0), config.image_size))
  spec = trainer_spec(config, shape)
  shard = trainer_shape.nets_per_shard(config.shard_size, spec.nets_per_chunk * mesh.size)
  # The shard size depends on the mesh; it is part of the corpus's identity so that a
  # resume on another device count is refused instead of silently re-sharding.
  meta = dict(corpus_meta(config, layout, encoder.name, dataset), nets_per_shard=shard)
  writer = corpus_lib.CorpusWriter(path, meta)
  plan = _plan(config, len(names))
  _write_or_check_plan(os.path.join(path, "plan.json"), plan)
  clock = _Clock(path, start) if primary else None
  emb_path = os.path.join(path, "class_emb.npz")
  if not os.path.exists(emb_path):
    io_lib.atomic_save_npz(emb_path, names=np.array(names), embeddings=class_emb)

  seen_classes = sorted(set(range(len(names))) - set(plan.heldout_classes))
  # The adapter family trains on the frozen trunk's cached features, not on the images.
  dataset = family_lib.prepare_data(config, path, dataset, class_emb, seen_classes)

  base_path = os.path.join(path, "base.npy")
  info_path = os.path.join(path, "generalist.json")
  if os.path.exists(base_path) and os.path.exists(info_path):
    base_params = layout.unflatten(jnp.asarray(np.load(base_path)))
    logging.info("generalist: read back from %s", base_path)
  else:
    base_params, info = train_generalist(config, model, dataset, class_emb, seen_classes)
    # The weights first: generalist.json marks the pair complete.
    io_lib.atomic_save_npy(base_path, np.asarray(layout.flatten(base_params)))
    io_lib.atomic_write_json(info_path, info.to_json())

  all_tasks = list(plan.tasks)
  num_shards = int(math.ceil(len(all_tasks) / shard))
  # Only process 0 removes a damaged shard's files (``shard_done``); the others only look.
  done = (writer.shard_done if primary
          else lambda i, ids: writer.shard_problem(i, ids) is None)
  todo = [i for i in range(num_shards)
          if not done(i, [t.task_id for t in all_tasks[i * shard:(i + 1) * shard]])]
  logging.info("%d nets in %d shards of %d (%d to do) on %d device(s) x %d process(es), "
               "%d nets per vmap chunk", len(all_tasks), num_shards, shard, len(todo),
               mesh.size, jax.process_count(), spec.nets_per_chunk)
  return _Setup(writer, layout, tuple(names), model, mesh, spec, shard, all_tasks, todo,
                dataset, class_emb, base_params, clock)


def _resolve_shape(config, path: str, embed_dim: int, dataset, mesh):
  """(the TrainerShape, a copy of ``config`` with it in place of auto values).

  Calibration (``trainer_shape.calibrate``) happens only when a value is neither forced nor
  recorded in ``path``'s meta.json: with several processes only process 0 gets there, the
  others read back the shape it recorded.
  """
  meta_path = os.path.join(path, "meta.json")
  recorded = None
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      recorded = json.load(f).get("trainer")
  workload = trainer_shape.workload_of(config.model, embed_dim, dataset, config.trainer,
                                       config.max_classes)
  num_nets = config.num_seen + config.num_unseen + config.num_heldout
  calibrate = functools.partial(trainer_shape.calibrate, workload, mesh, num_nets=num_nets,
                                shard_size=config.shard_size)
  shape = trainer_shape.resolve(config.trainer, recorded=recorded, calibrate=calibrate,
                                where=f"the corpus at {path}")
  logging.info(trainer_shape.describe(shape, trainer_shape.source_of(config.trainer, recorded)))
  resolved = copy.deepcopy(config)
  resolved.trainer.update(conv_impl=shape.conv_impl, nets_per_chunk=shape.nets_per_chunk)
  return shape, resolved


def _write_or_check_plan(plan_path: str, plan: tasks_lib.TaskPlan) -> None:
  """Writes plan.json, or checks a stored one against the plan this config draws."""
  if not os.path.exists(plan_path):
    io_lib.atomic_write_json(plan_path, plan.to_json())
    return
  with open(plan_path) as f:
    stored = json.load(f)
  fresh = json.loads(json.dumps(plan.to_json()))
  if stored != fresh:
    n_old, n_new = len(stored.get("tasks", ())), len(fresh["tasks"])
    raise ConfigError(f"{plan_path} ({n_old} tasks) is not the plan this config draws "
                      f"({n_new} tasks): the corpus was started with other task settings or "
                      "code; resume with those, or use another --workdir")


class _Clock:
  """Seconds spent on a corpus over all its attempts, kept in corpus/progress.json.

  Each attempt adds its own time, saved after every shard, so a resumed corpus reports the
  total instead of its last attempt's; the time an interrupted attempt spent after its last
  saved shard is lost (and said to be, by ``format_summary``). The file also records the
  number of processes of the last attempt, so that a resume on another number says so.
  Kept by process 0 alone.
  """

  def __init__(self, path: str, start: float):
    self.file, self.start = os.path.join(path, "progress.json"), start
    prev = {}
    if os.path.exists(self.file):
      with open(self.file) as f:
        prev = json.load(f)
    self.before = float(prev.get("seconds", 0.0))
    self.attempts = int(prev.get("attempts", 0)) + 1
    self.processes = jax.process_count()
    if prev and int(prev.get("processes", 1)) != self.processes:
      # Handled, not refused: a shard is trained whole by one process, on that process's
      # devices, and the device count per process is checked (nets_per_shard in meta.json).
      logging.warning("corpus at %s was begun on %d process(es) and is resumed on %d: "
                      "handled; the shards left are dealt to these processes, and the "
                      "corpus is the same", path, int(prev.get("processes", 1)),
                      self.processes)
    self.save()  # counts this attempt even if it is killed before its first shard

  def save(self) -> float:
    total = self.before + time.time() - self.start
    io_lib.atomic_write_json(self.file, {"seconds": total, "attempts": self.attempts,
                                         "processes": self.processes})
    return total


def summarize(records) -> dict:
  """Per split: nets, mean generalist ("base") and specialist ("trained") accuracy, the
  mean paired gain in points with its standard error, and the specialists' mean kept step.
  """
  out = {"nets": len(records)}
  for split in tasks_lib.SPLITS + ("all",):
    rs = [r for r in records if split == "all" or r["split"] == split]
    if not rs:
      continue
    b = np.array([r["base_acc"] for r in rs])
    t = np.array([r["trained_acc"] for r in rs])
    d = 100 * (t - b)
    out[split] = {"nets": len(rs), "base_acc": float(b.mean()), "trained_acc": float(t.mean()),
                  "gain_points": float(d.mean()),
                  "gain_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0,
                  "trained_acc_max": float(t.max()),
                  "mean_steps": float(np.mean([r.get("steps", 0) for r in rs]))}
  return out


def format_summary(summary: dict) -> str:
  """A small Markdown table of a corpus summary."""
  lines = ["| split | nets | generalist acc | specialist acc | room (points, ± s.e.) | "
           "specialist steps |", "|---|---:|---:|---:|---:|---:|"]
  for split in tasks_lib.SPLITS + ("all",):
    if split in summary:
      s = summary[split]
      lines.append(f"| {split} | {s['nets']} | {s['base_acc']:.3f} | {s['trained_acc']:.3f} | "
                   f"{s['gain_points']:+.1f} ± {s.get('gain_se', 0):.1f} | "
                   f"{s.get('mean_steps', 0):.0f} |")
  if "generalist" in summary:
    g = summary["generalist"]
    lines.append(f"\ngeneralist: kept step {g['steps']} of {g['steps_run']} "
                 f"(val acc {g['val_acc']:.3f}, {g['seconds']:.0f} s)")
  if "seconds" in summary:
    line = f"\n{summary['nets']} nets in {summary['seconds']:.0f} s"
    if summary.get("attempts", 1) > 1:
      line += (f" over {summary['attempts']} attempts (resumed; the time after an "
               "interrupted attempt's last shard is not counted)")
    lines.append(line)
  return "\n".join(lines)

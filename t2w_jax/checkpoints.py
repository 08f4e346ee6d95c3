"""The on-disk format of training checkpoints, and the one place that reads and writes it.

A checkpoint directory (``workdir/checkpoints``) holds one orbax step directory per saved
step, each with two items: ``state``, the whole TrainState (a pytree), and ``meta``, the
JSON identity of the run (``GeneratorSpec.identity()``: model, tokenizer, corpus layout,
encoder). Training (``t2w_jax.train``) saves and fully restores through ``Checkpointer``;
inference (``t2w_jax.generator``) reads the EMA parameters alone through ``restore_ema``.
This module imports nothing from either.

Integrity. Once orbax has committed a step, the SHA-256 digest and size of every file of
the step (the arrays' data files, orbax's metadata, the meta item) are written beside them
as ``<step>/digests.json``. Every restore checks the step's files against it first:

* ``restore_ema`` (``api.load``) refuses a damaged step in one line naming the step and the
  file, and names the newest older step that is intact; it also refuses EMA parameters
  that are not finite;
* ``Checkpointer.restore`` (a training resume) with no step given restores the newest
  intact step, logs which steps it passed over and why, and removes them (the run then
  saves those steps again).

``format.json`` in the checkpoint directory records the first step saved with digests: a
later step without ``digests.json`` had its save cut short between orbax's commit and the
digests, and counts as damaged. Steps older than that (or every step, in a directory
without ``format.json``) were written before checkpoints carried digests: they restore
with a warning, unverified.
"""
import concurrent.futures
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from t2w_jax import io as io_lib
from t2w_jax import multihost
from t2w_jax.errors import ConfigError, CorruptError, MissingError

CHECKPOINT_DIR = "checkpoints"   # under the workdir
DIGESTS_FILE = "digests.json"    # in each step directory
FORMAT_FILE = "format.json"      # in the checkpoint directory
ITEMS = ("state", "meta")


# --------------------------------------------------------------------------- identity
def check_meta(stored: dict, expected: dict, where: str) -> None:
  """Refuses a checkpoint (or spec) written with another config.

  Args:
    stored: the identity read from disk.
    expected: the identity of the current config.
    where: what was read, for the message.

  Raises:
    ConfigError: naming every key whose value differs (the first four in full).
  """
  diff = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
  if diff:
    detail = "; ".join(f"{k}: checkpoint {stored.get(k)!r} vs config {expected.get(k)!r}"
                       for k in diff[:4])
    raise ConfigError(f"checkpoint at {where} was written with another config ({detail}); "
                      "resume with that config, or use another --workdir")


# --------------------------------------------------------------------------- digests
def _digest_files(root: str, names: list[str]) -> dict:
  # hashlib releases the GIL on large blocks: threads hash several data files at once.
  workers = max(1, min(8, os.cpu_count() or 1, len(names)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    digests = pool.map(lambda n: io_lib.file_digest(os.path.join(root, n)), names)
    return dict(zip(names, digests))


def _step_files(step_dir: str) -> list[str]:
  """Every file of a step directory but the digests, as sorted relative paths."""
  out = []
  for dirpath, _, files in os.walk(step_dir):
    for name in files:
      rel = os.path.relpath(os.path.join(dirpath, name), step_dir)
      if rel != DIGESTS_FILE:
        out.append(rel)
  return sorted(out)


def write_digests(step_dir: str) -> None:
  """Writes ``step_dir/digests.json``: size and SHA-256 of every file of the step."""
  digests = _digest_files(step_dir, _step_files(step_dir))
  io_lib.atomic_write_json(os.path.join(step_dir, DIGESTS_FILE),
                           {"algorithm": "sha256", "files": digests})


def _digests_from(directory: str) -> int | None:
  path = os.path.join(directory, FORMAT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return int(json.load(f)["digests_from_step"])


def step_problem(directory: str, step: int) -> str | None:
  """What is wrong with a saved step's files, or None when they match their digests.

  Args:
    directory: the checkpoint directory.
    step: a step saved in it.

  Returns:
    None (intact, or written before digests: a warning is logged), else a short reason
    naming the file ("state/d/3f2a... does not match its digest").
  """
  step_dir = os.path.join(directory, str(step))
  path = os.path.join(step_dir, DIGESTS_FILE)
  if not os.path.exists(path):
    since = _digests_from(directory)
    if since is not None and step >= since:
      return (f"{DIGESTS_FILE} is missing (its save was cut short after the arrays were "
              "written)")
    logging.warning("checkpoint step %d in %s predates checkpoint digests: restored "
                    "unverified", step, directory)
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)["files"]
  except (ValueError, KeyError, TypeError):
    return f"{DIGESTS_FILE} is damaged"
  missing = [n for n in recorded if not os.path.isfile(os.path.join(step_dir, n))]
  if missing:
    return f"{missing[0]} is missing"
  wrong_size = [n for n, d in recorded.items()
                if os.path.getsize(os.path.join(step_dir, n)) != d["bytes"]]
  if wrong_size:
    return f"{wrong_size[0]} does not match its digest (size)"
  actual = _digest_files(step_dir, sorted(recorded))
  for name in sorted(recorded):
    if actual[name]["sha256"] != recorded[name]["sha256"]:
      return f"{name} does not match its digest"
  return None


def newest_intact_step(directory: str, steps, below: int | None = None) -> int | None:
  """The newest of ``steps`` (below ``below``, if given) whose files are intact."""
  for s in sorted(steps, reverse=True):
    if (below is None or s < below) and step_problem(directory, s) is None:
      return s
  return None


def _damaged(directory: str, step: int, problem: str) -> str:
  return f"checkpoint step {step} in {directory} is damaged: {problem}"


# --------------------------------------------------------------------------- training
class Checkpointer:
  """Saves and restores one TrainState and its meta (``ocp.CheckpointManager``).

  Args:
    directory: where step directories go (created).
    meta: JSON-able identity of the run; checked on restore.
    save_every: save when ``step % save_every == 0`` (and whenever ``force``).
    keep: how many checkpoints to keep.
  """

  def __init__(self, directory: str, meta: dict, *, save_every: int, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.meta = meta
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` when due (or forced), then its digests.

    Returns:
      Whether it saved (a step already on disk is not saved again).
    """
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self._mgr.all_steps():
      return False
    if multihost.is_primary() and _digests_from(self.directory) is None:
      # From this step on, a step without digests is an interrupted save.
      io_lib.atomic_write_json(os.path.join(self.directory, FORMAT_FILE),
                               {"digests_from_step": int(step)})
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(self.meta)))
    self._mgr.wait_until_finished()
    multihost.barrier(f"checkpoint {step} written")  # every process's files are in place
    if multihost.is_primary():
      write_digests(os.path.join(self.directory, str(step)))
    return True

  def read_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise MissingError(f"no checkpoint in {self.directory}")
    return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def _choose_step(self, step: int | None) -> int:
    """The step to restore: ``step`` if intact, else (None) the newest intact step, the
    newer damaged ones being logged and removed."""
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise MissingError(f"no checkpoint step {step} in {self.directory} (steps: {steps})")
      problem = step_problem(self.directory, step)
      if problem:
        raise CorruptError(_damaged(self.directory, step, problem))
      return step
    if not steps:
      raise MissingError(f"no checkpoint in {self.directory}")
    damaged = []
    for s in sorted(steps, reverse=True):
      problem = step_problem(self.directory, s)
      if problem is None:
        break
      damaged.append((s, problem))
    else:
      s = None
    if damaged:
      if s is None:
        raise CorruptError(f"every checkpoint in {self.directory} is damaged (step "
                           f"{damaged[0][0]}: {damaged[0][1]}); remove {self.directory} to "
                           "train from the start")
      for bad, problem in damaged:
        logging.warning("%s; resuming from step %d, the newest intact step (step %d is "
                        "removed and will be saved again)", _damaged(self.directory, bad,
                                                                     problem), s, bad)
      multihost.barrier("checkpoints verified")  # no process still reads what goes now
      for bad, _ in damaged:
        self._mgr.delete(bad)
    return s

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores into the structure, dtypes and shardings of ``target`` (a TrainState).

    Args:
      target: a TrainState (arrays or ``jax.ShapeDtypeStruct``s).
      step: a step to restore (refused if damaged); None: the newest intact step.

    Returns:
      The restored TrainState.

    Raises:
      MissingError: no checkpoint (or not that step).
      CorruptError: the step asked for, or every step, is damaged (step and file named).
      ConfigError: the checkpoint was written with another config (keys named).
    """
    step = self._choose_step(step)
    meta = self.read_meta(step)
    check_meta(meta, self.meta, where=f"{self.directory} step {step}")
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
      # Leaves without a sharding (e.g. from jax.eval_shape) land on one local device, so a
      # checkpoint written on another topology (8 devices -> 1) still restores.
      s = ocp.utils.to_shape_dtype_struct(x)
      if getattr(s, "sharding", None) is None:
        s = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=default)
      return s

    abstract = jax.tree.map(leaf, target)
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    logging.info("restored step %d from %s", step, self.directory)
    return out["state"]

  def close(self):
    self._mgr.close()


# --------------------------------------------------------------------------- inference
def restore_ema(directory: str, identity: dict, ema_target: Any,
                step: int | None = None, canonical=None) -> tuple[Any, int]:
  """Reads the EMA parameters (and the step) of a training checkpoint, nothing else.

  The optimiser states and the discriminator stay on disk (a partial restore), so
  inference never builds them.

  Args:
    directory: the checkpoint directory (``workdir/checkpoints``).
    identity: what the checkpoint's meta must equal (``GeneratorSpec.identity()``).
    ema_target: the EMA parameters' structure, as ``jax.ShapeDtypeStruct`` leaves.
    step: a checkpoint step; None for the latest.
    canonical: applied to the stored meta before it is compared (the spec's own reading
      of metas written by older code, ``generator.canonical_identity``); None: as stored.

  Returns:
    (ema_params, step).

  Raises:
    MissingError: no checkpoint (or not that step).
    CorruptError: the step's files do not match their digests (the step, the file and the
      newest older intact step are named), or its EMA parameters are not finite.
    ConfigError: the checkpoint was written with another config (keys named).
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise MissingError(f"no checkpoint in {directory}; train first")
  io_lib.quiet_orbax_logs()
  options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False,
                                         read_only=True)
  mgr = ocp.CheckpointManager(directory, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  try:
    steps = list(mgr.all_steps())
    if not steps:
      raise MissingError(f"no checkpoint in {directory}; train first")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise MissingError(f"no checkpoint step {step} in {directory} (steps: {sorted(steps)})")
    problem = step_problem(directory, step)
    if problem:
      older = newest_intact_step(directory, steps, below=step)
      hint = (f"the newest intact step is {older}: load it with step={older}"
              if older is not None else "no older step is intact")
      raise CorruptError(f"{_damaged(directory, step, problem)}; {hint}")
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_meta(meta if canonical is None else canonical(meta), identity,
               where=f"{directory} step {step}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    ema = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                       ema_target)
    # A partial restore: only these two entries are read from the saved TrainState.
    target = {"step": jax.ShapeDtypeStruct((), np.int32, sharding=device), "ema_params": ema}
    out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)))
  finally:
    mgr.close()
  params = out["state"]["ema_params"]
  _check_finite(params, f"checkpoint step {step} in {directory}")
  logging.info("restored the EMA parameters of step %d from %s", step, directory)
  return params, int(out["state"]["step"])


def _check_finite(params: Any, where: str) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
    if bad:
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      raise CorruptError(f"{where} holds non-finite EMA parameters ({bad} NaN or inf "
                         f"values in {name}): the run diverged before this step; load an "
                         "earlier step with step=N")

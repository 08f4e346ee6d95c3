"""Checkpoints with orbax: save every N steps, keep K, resume exactly, refuse a mismatch.

Each checkpoint holds the whole TrainState (a pytree) and a JSON ``meta`` item that names
the config it was written with (model, tokenizer, corpus identity). Restoring under another
config raises a ValueError that names the differing keys instead of failing deep in orbax
on a shape mismatch.
"""
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from t2w_jax.errors import ConfigError


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for one TrainState + its meta.

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
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` when due (or forced); returns whether it saved."""
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self._mgr.all_steps():
      return False
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(self.meta)))
    self._mgr.wait_until_finished()
    return True

  def read_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores into the structure, dtypes and shardings of ``target`` (a TrainState).

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: the checkpoint was written with another config (keys named).
    """
    step = self.latest_step() if step is None else step
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


def check_meta(stored: dict, expected: dict, where: str) -> None:
  """Raises a ConfigError (a ValueError) naming every key whose value differs."""
  diff = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
  if diff:
    detail = "; ".join(f"{k}: checkpoint {stored.get(k)!r} vs config {expected.get(k)!r}"
                       for k in diff[:4])
    raise ConfigError(f"checkpoint at {where} was written with another config ({detail}); "
                      "resume with that config, or use another --workdir")

"""Measure the room (specialist - generalist on unseen tasks) over subtask-net settings.

  python launch/sweep_room.py --config=configs/room_sweep.py --workdir=runs/room

Writes WORKDIR/<setting>/ (a small corpus per setting), WORKDIR/rows.json and prints the
table (published copy: docs/results/room_sweep.md). Rerun with the same --workdir to resume.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from configs import corpus as corpus_config  # noqa: E402
from t2w_jax import cli  # noqa: E402
from t2w_jax.zoo import room  # noqa: E402


def settings_of(config):
  """(name, corpus config) for every net x task-size pair of a sweep config."""
  out = []
  for net in config.nets.split(","):
    for sizes in config.task_sizes.split(","):
      variant = ",".join(p for p in (config.corpus_variant, f"net={net}", f"tasks={sizes}") if p)
      c = corpus_config.get_config(variant)
      c.num_seen, c.num_unseen, c.num_heldout = 0, config.num_tasks, 0
      c.shard_size = config.num_tasks  # one shard, no padding nets
      out.append((f"{net}_tasks{sizes}", c))
  return out


def _sweep(config, workdir):
  return room.format_rows(room.run_sweep(settings_of(config), workdir))


if __name__ == "__main__":
  cli.main(_sweep, what="room sweep", workdir_help="sweep directory")

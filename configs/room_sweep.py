"""Room sweep config: which settings launch/sweep_room.py measures.

  python launch/sweep_room.py --config=configs/room_sweep.py --workdir=runs/room
  python launch/sweep_room.py --config=configs/room_sweep.py:tiny --workdir=/tmp/room

Each setting is ``configs/corpus.py:net=NET,tasks=RANGE`` with only unseen tasks
(``num_tasks`` of them): the room is measured on the tasks the generator is evaluated on.
``get_config(arg)``: "" (the published sweep) or "tiny" (seconds; tests).
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.nets = "cnn2k,cnn4k,adapter4,adapter16,cnn8k,cnn19k"  # configs/corpus.py NETS
  c.task_sizes = "2-4,5-10,8-32"        # classes per task, MIN-MAX
  c.num_tasks = 32                      # unseen tasks per setting
  c.corpus_variant = ""                 # a configs/corpus.py variant applied first ("tiny")
  if arg == "tiny":
    c.nets = "cnn2k,adapter4"
    c.task_sizes = "2-3,4-6"
    c.num_tasks = 4
    c.corpus_variant = "tiny"
  elif arg:
    raise ValueError(f"unknown room sweep variant {arg!r}; use '' or 'tiny'")
  return c

"""Tasks (class subsets) and their three splits.

* ``seen``: tasks over the seen classes; the generator trains on these.
* ``unseen``: new combinations of seen classes (no seen task has the same class set).
* ``heldout``: tasks that contain held-out classes, names that no seen or unseen task
  contains; about half of each such task's classes are held out, the rest are seen.

Everything is a pure function of the seed, so a resumed corpus run draws the same plan.
"""
import dataclasses
from typing import Sequence

import numpy as np

SPLITS = ("seen", "unseen", "heldout")


@dataclasses.dataclass(frozen=True)
class Task:
  """One classification task: an ordered class subset of a dataset."""
  task_id: int
  split: str
  class_ids: tuple[int, ...]
  seed: int


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """Which classes are held out, and every task of every split, in corpus order."""
  heldout_classes: tuple[int, ...]
  tasks: tuple[Task, ...]

  def split(self, name: str) -> list[Task]:
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; known: {SPLITS}")
    return [t for t in self.tasks if t.split == name]

  def to_json(self) -> dict:
    return {"heldout_classes": list(self.heldout_classes),
            "tasks": [dataclasses.asdict(t) | {"class_ids": list(t.class_ids)}
                      for t in self.tasks]}

  @classmethod
  def from_json(cls, d) -> "TaskPlan":
    return cls(tuple(d["heldout_classes"]),
               tuple(Task(t["task_id"], t["split"], tuple(t["class_ids"]), t["seed"])
                     for t in d["tasks"]))


def ordered_union(a: Sequence, b: Sequence) -> list:
  """The classes of task A, then those of task B that A lacks, each once (a fused task)."""
  return list(dict.fromkeys([*a, *b]))


def heldout_classes(num_classes: int, frac: float, seed: int) -> tuple[int, ...]:
  """A seeded ``frac`` of the class ids (at least one when frac > 0), sorted."""
  if not 0.0 <= frac < 1.0:
    raise ValueError(f"heldout fraction must be in [0, 1), got {frac}")
  n = int(round(num_classes * frac))
  if frac > 0:
    n = max(n, 1)
  rng = np.random.default_rng([seed, 7919])
  return tuple(sorted(int(c) for c in rng.choice(num_classes, n, replace=False)))


def make_plan(num_classes: int, *, num_seen: int, num_unseen: int, num_heldout: int,
              min_classes: int = 8, max_classes: int = 32, heldout_frac: float = 0.1,
              seed: int = 0) -> TaskPlan:
  """Draws the task plan.

  Args:
    num_classes: classes in the dataset.
    num_seen / num_unseen / num_heldout: tasks per split.
    min_classes / max_classes: task size range (inclusive), clipped to what is available.
    heldout_frac: fraction of classes held out of seen and unseen tasks.
    seed: the plan's seed; net seeds derive from it.

  Returns:
    A TaskPlan whose tasks have ids 0..N-1 in the order seen, unseen, heldout.
  """
  if min_classes < 2 or max_classes < min_classes:
    raise ValueError(f"need 2 <= min_classes <= max_classes, got {min_classes}, {max_classes}")
  held = heldout_classes(num_classes, heldout_frac, seed)
  seen_pool = np.array(sorted(set(range(num_classes)) - set(held)))
  if len(seen_pool) < min_classes:
    raise ValueError(f"only {len(seen_pool)} seen classes for tasks of >= {min_classes}")
  if num_heldout and not held:
    raise ValueError("heldout tasks requested but heldout_frac gives no held-out classes")
  rng = np.random.default_rng([seed, 104729])
  tasks: list[Task] = []
  used: set[frozenset] = set()

  def size(pool_size: int) -> int:
    return int(rng.integers(min(min_classes, pool_size), min(max_classes, pool_size) + 1))

  def add(split: str, ids: Sequence[int]):
    tasks.append(Task(len(tasks), split, tuple(int(i) for i in ids),
                      int(rng.integers(0, 2**31 - 1))))

  for _ in range(num_seen):
    ids = rng.choice(seen_pool, size(len(seen_pool)), replace=False)
    used.add(frozenset(ids.tolist()))
    add("seen", ids)
  for _ in range(num_unseen):
    for _attempt in range(1000):
      ids = rng.choice(seen_pool, size(len(seen_pool)), replace=False)
      if frozenset(ids.tolist()) not in used:
        break
    else:
      raise ValueError("could not draw an unseen combination; too few seen classes")
    used.add(frozenset(ids.tolist()))
    add("unseen", ids)
  held_arr = np.array(held)
  for _ in range(num_heldout):
    k = size(len(seen_pool) + len(held))
    m = min(max(1, k // 2), len(held))
    ids = np.concatenate([rng.choice(held_arr, m, replace=False),
                          rng.choice(seen_pool, k - m, replace=False)])
    add("heldout", rng.permutation(ids))
  return TaskPlan(held, tuple(tasks))


def pad_classes(class_lists: Sequence, max_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Class lists of different lengths -> fixed class slots: the one padding of class lists.

  Batches of tasks have one shape: each task's classes fill its first slots and a mask
  marks them. Used for class ids (``pad_tasks``) and class embeddings (the generator's
  input).

  Args:
    class_lists: n arrays (k_i, ...), one entry per class (an id, an embedding), alike
      beyond the first axis.
    max_classes: the slots wanted; a longer list widens every row to its length.

  Returns:
    (padded, mask): (n, K, ...) with zeros after each list, in the lists' dtype (float32
    for no lists), and (n, K) bool, True on the real classes; K = max(max_classes, longest
    list).
  """
  lists = [np.asarray(c) for c in class_lists]
  k = max([max_classes] + [len(c) for c in lists])
  tail, dtype = (lists[0].shape[1:], np.result_type(*lists)) if lists else ((), np.float32)
  padded = np.zeros((len(lists), k) + tail, dtype)
  mask = np.zeros((len(lists), k), bool)
  for i, c in enumerate(lists):
    padded[i, :len(c)] = c
    mask[i, :len(c)] = True
  return padded, mask


def pad_tasks(tasks: Sequence[Task], max_classes: int):
  """(n, K) class ids (padding repeats the first class) and (n, K) validity mask.

  Raises:
    ValueError: a task has more than ``max_classes`` classes.
  """
  for t in tasks:
    if len(t.class_ids) > max_classes:
      raise ValueError(f"task {t.task_id} has {len(t.class_ids)} classes, more than "
                       f"max_classes={max_classes}")
  ids, mask = pad_classes([np.asarray(t.class_ids, np.int32) for t in tasks], max_classes)
  # Padding slots repeat the first class: a valid id wherever the ids index an array.
  return np.where(mask, ids, ids[:, :1]).astype(np.int32), mask


def shot_split(k: int) -> tuple[int, int]:
  """(training shots, validation shots) of a class with k labelled images, few-shot style.

  Early stopping may only see the user's own shots: a fifth of them (at least one) are held
  out for validation. k = 1 has nothing to hold out: (1, 0), and the shot validates itself
  (training then stops once the shots stop gaining).

  Raises:
    ValueError: k < 1.
  """
  if k < 1:
    raise ValueError(f"need at least 1 labelled image per class, got {k}")
  if k == 1:
    return 1, 0
  val = max(1, round(k / 5))
  return k - val, val


def validation_mask(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
  """Which training examples form the validation split: ``per_class`` of every class.

  The validation split is carved from the TRAINING images (never the test images) and is
  the same for the generalist and for every specialist, so early stopping never sees a test
  image and no net trains on a validation image.

  Args:
    labels: (N,) class label of each training example.
    per_class: validation examples per class (a class with fewer than ``2 * per_class``
      examples keeps at least half of them for training).
    seed: which examples are picked (a seeded permutation within each class).

  Returns:
    (N,) bool, True for validation examples.
  """
  labels = np.asarray(labels)
  out = np.zeros(labels.shape, bool)
  if per_class <= 0:
    return out
  rng = np.random.default_rng([seed, 15485863])
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    take = min(per_class, len(rows) // 2)
    out[rng.permutation(rows)[:take]] = True
  return out

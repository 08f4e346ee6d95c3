"""The text–weight corpus on disk: writing in resumable shards, and reading.

Layout of a corpus directory::

  meta.json         format version, parameter layout (+ fingerprint), text encoder name,
                    prompt template, dataset, image size, model and trainer settings
  plan.json         the task plan (held-out classes, every task); fixes resume
  class_emb.npz     names (C,) and embeddings (C, d) of every class of the dataset
  base.npy          the generalist (the shared start of every net), flat (D,)
  generalist.json   how it was trained: kept step, steps run, validation accuracy, seconds
  shards/NNNNN.npy  (n, D) float32 weights of one shard of nets
  shards/NNNNN.jsonl  one record per net of that shard (written last: marks the shard done)
  weights.npy       (N, D) float32, all nets in task order (memory-mapped by readers)
  manifest.jsonl    one record per net: task id, split, class names and ids, seed,
                    generalist ("base") and specialist ("trained") test accuracy,
                    final loss, the specialist's kept step and steps run

Every file is written to a temporary name and renamed, so an interrupted run leaves only
whole files, and a resumed run skips the shards that are done.
"""
import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from t2w_jax.weights.layout import ParamLayout

FORMAT_VERSION = 1


def atomic_write_bytes(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  tmp = f"{path}.tmp.{os.getpid()}.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def atomic_save_npz(path: str, **arrays) -> None:
  tmp = f"{path}.tmp.{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _write_jsonl(path: str, records: Iterable[dict]) -> None:
  atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class CorpusWriter:
  """Writes a corpus shard by shard; reopening the same directory resumes it.

  Args:
    path: corpus directory.
    meta: the corpus's identity (layout, encoder, dataset, ...). Reopening a directory
      whose meta differs raises a ValueError naming the differing keys.
  """

  def __init__(self, path: str, meta: dict):
    self.path = path
    # Through JSON once, so tuples and lists compare equal to what a reopen reads back.
    self.meta = json.loads(json.dumps(dict(meta, format_version=FORMAT_VERSION)))
    os.makedirs(os.path.join(path, "shards"), exist_ok=True)
    meta_path = os.path.join(path, "meta.json")
    if os.path.exists(meta_path):
      with open(meta_path) as f:
        old = json.load(f)
      diff = sorted(k for k in set(old) | set(self.meta) if old.get(k) != self.meta.get(k))
      if diff:
        raise ValueError(f"corpus at {path} was written with other settings ({', '.join(diff)}"
                         f"); use another --workdir or delete it")
    else:
      atomic_write_json(meta_path, self.meta)

  def _shard(self, i: int, ext: str) -> str:
    return os.path.join(self.path, "shards", f"{i:05d}.{ext}")

  def shard_done(self, i: int) -> bool:
    return os.path.exists(self._shard(i, "jsonl")) and os.path.exists(self._shard(i, "npy"))

  def write_shard(self, i: int, weights: np.ndarray, records: Sequence[dict]) -> None:
    if weights.shape[0] != len(records):
      raise ValueError(f"shard {i}: {weights.shape[0]} weight rows for {len(records)} records")
    atomic_save_npy(self._shard(i, "npy"), np.asarray(weights, np.float32))
    _write_jsonl(self._shard(i, "jsonl"), records)  # last: marks the shard as done

  def finalize(self, num_shards: int) -> None:
    """Concatenates the shards into weights.npy and manifest.jsonl (atomically)."""
    missing = [i for i in range(num_shards) if not self.shard_done(i)]
    if missing:
      raise ValueError(f"cannot finalize: shards {missing[:5]}... are missing")
    rows = sum(np.load(self._shard(i, "npy"), mmap_mode="r").shape[0]
               for i in range(num_shards))
    d = self.meta["layout"]["total"]
    tmp = os.path.join(self.path, f"weights.npy.tmp.{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, d))
    records, r = [], 0
    for i in range(num_shards):
      w = np.load(self._shard(i, "npy"))
      out[r:r + len(w)] = w
      r += len(w)
      records.extend(_read_jsonl(self._shard(i, "jsonl")))
    out.flush()
    del out
    os.replace(tmp, os.path.join(self.path, "weights.npy"))
    _write_jsonl(os.path.join(self.path, "manifest.jsonl"), records)


@dataclasses.dataclass
class Corpus:
  """A corpus opened for reading.

  Attributes:
    path: its directory.
    meta: meta.json contents.
    layout: the parameter layout of every row.
    weights: (N, D) float32, memory-mapped.
    records: one dict per row (task_id, split, classes, class_ids, seed, accuracies...).
    class_names: (C,) every class of the dataset; class_emb: (C, d) their embeddings.
    base: (D,) the shared base net.
  """
  path: str
  meta: dict
  layout: ParamLayout
  weights: np.ndarray
  records: list
  class_names: tuple
  class_emb: np.ndarray
  base: np.ndarray

  def __len__(self) -> int:
    return len(self.records)

  def indices(self, split: str) -> np.ndarray:
    """Row indices of one split."""
    return np.array([i for i, r in enumerate(self.records) if r["split"] == split], np.int64)

  @property
  def plan(self):
    from t2w_jax.data.tasks import TaskPlan  # local: keeps corpus reading import-light
    with open(os.path.join(self.path, "plan.json")) as f:
      return TaskPlan.from_json(json.load(f))


def open_corpus(path: str, *, layout: ParamLayout | None = None,
                encoder_name: str | None = None) -> Corpus:
  """Opens a finished corpus, refusing one written for another layout or encoder.

  Args:
    path: corpus directory.
    layout: if given, the layout the caller's model has; a corpus with another layout is
      refused with a ValueError that names both.
    encoder_name: if given, the caller's text encoder; likewise refused on mismatch.

  Returns:
    A Corpus (weights memory-mapped).
  """
  meta_path = os.path.join(path, "meta.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"no corpus at {path} (missing meta.json); run "
                            "launch/make_corpus.py first")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"corpus at {path} has format version {meta.get('format_version')}, "
                     f"this code reads version {FORMAT_VERSION}")
  stored = ParamLayout.from_json(meta["layout"])
  if layout is not None and layout != stored:
    raise ValueError(f"corpus at {path} was written for another parameter layout: "
                     f"corpus {stored.fingerprint()} ({stored.describe()}) vs model "
                     f"{layout.fingerprint()} ({layout.describe()})")
  if encoder_name is not None and meta.get("encoder") != encoder_name:
    raise ValueError(f"corpus at {path} was embedded with text encoder "
                     f"{meta.get('encoder')!r}, not {encoder_name!r}")
  if not os.path.exists(os.path.join(path, "weights.npy")):
    raise FileNotFoundError(f"corpus at {path} is unfinished (no weights.npy); rerun "
                            "make_corpus with the same --workdir to resume it")
  weights = np.load(os.path.join(path, "weights.npy"), mmap_mode="r")
  if weights.shape[1] != stored.total:
    raise ValueError(f"corpus at {path}: weights have {weights.shape[1]} columns, its layout "
                     f"says {stored.total}")
  records = _read_jsonl(os.path.join(path, "manifest.jsonl"))
  emb = np.load(os.path.join(path, "class_emb.npz"))
  return Corpus(path, meta, stored, weights, records, tuple(str(n) for n in emb["names"]),
                emb["embeddings"], np.load(os.path.join(path, "base.npy")))

"""The text–weight corpus on disk: writing in resumable shards, and reading.

Layout of a corpus directory::

  meta.json         format version, parameter layout (+ fingerprint), text encoder name,
                    prompt template, dataset, image size, model and trainer settings
  plan.json         the task plan (held-out classes, every task); fixes resume
  class_emb.npz     names (C,) and embeddings (C, d) of every class of the dataset
  base.npy          the generalist (the shared start of every net), flat (D,)
  generalist.json   how it was trained: kept step, steps run, validation accuracy, seconds
  shards/NNNNN.npy  (n, D) float32 weights of one shard of nets
  shards/NNNNN.jsonl  one record per net of that shard
  shards/NNNNN.sum.json  rows, bytes and sha256 of the shard's two files (written last:
                    marks the shard done)
  weights.npy       (N, D) float32, all nets in task order (memory-mapped by readers)
  manifest.jsonl    one record per net: task id, split, class names and ids, seed,
                    generalist ("base") and specialist ("trained") test accuracy,
                    final loss, the specialist's kept step and steps run
  checksums.json    rows, bytes and sha256 of weights.npy and manifest.jsonl (written last:
                    marks the corpus finished)
  progress.json     seconds spent and attempts made so far (zoo/make_corpus.py)
  summary.json      per-split accuracies, total seconds and attempts (zoo/make_corpus.py)

Every file is written to a temporary name and renamed, so an interrupted run leaves only
whole files, and a resumed run skips the shards that are done. Integrity: a shard counts as
done only when its files match its checksum record (a damaged shard is named in the log
and rebuilt on resume), and ``open_corpus`` checks the finished corpus against
checksums.json and that its records line up with its weight rows (task ids 0..N-1, as many
records as rows), naming the damaged file and how to rebuild it.
"""
import dataclasses
import json
import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np

from t2w_jax.errors import ConfigError, CorruptError, MissingError
from t2w_jax.io import atomic_save_npy, atomic_write_bytes, atomic_write_json, file_digest
from t2w_jax.weights.layout import ParamLayout

CHECKSUMS_FILE = "checksums.json"

FORMAT_VERSION = 1




def _flatten(d: Any, prefix: str = "") -> dict:
  """Nested dicts -> {"a.b.c": leaf}, so that a difference is named down to its key."""
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
  if not d and prefix:
    out[prefix] = {}
  return out


def diff_settings(old: dict, new: dict) -> list[str]:
  """The dotted keys whose values differ between two nested dicts, as "key: old -> new".

  Args:
    old: the stored settings.
    new: this run's settings.

  Returns:
    One "key: old -> new" string per differing leaf key, sorted ("<absent>" for a key only
    one side has).
  """
  a, b = _flatten(old), _flatten(new)
  missing = "<absent>"
  return [f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


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
      whose meta differs raises a ConfigError (a ValueError) naming each differing key
      with its stored and new value.
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
      diff = diff_settings(old, self.meta)
      if diff:
        raise ConfigError(
            f"corpus at {path} was written with other settings ({'; '.join(diff)}); rerun "
            f"with the settings it was written with, or use another --workdir (or delete it)")
    else:
      atomic_write_json(meta_path, self.meta)

  def _shard(self, i: int, ext: str) -> str:
    return os.path.join(self.path, "shards", f"{i:05d}.{ext}")

  def shard_problem(self, i: int, task_ids: Sequence[int] | None = None) -> str | None:
    """Why shard i is not done (None if it is: whole, checksummed, lined up).

    Args:
      i: shard index.
      task_ids: if given, the task ids its records must carry, in order.

    Returns:
      None, "missing" (never written, or interrupted before its checksum record), or a
      sentence naming the damaged file.
    """
    npy, jsonl, summ = (self._shard(i, e) for e in ("npy", "jsonl", "sum.json"))
    if not os.path.exists(summ):
      return "missing"
    try:
      with open(summ) as f:
        want = json.load(f)
    except ValueError:
      return f"{summ} is not valid JSON"
    for name in (npy, jsonl):
      if not os.path.exists(name):
        return f"{name} is missing"
      got = file_digest(name)
      exp = want.get(os.path.basename(name), {})
      if got != exp:
        return (f"{name} does not match its checksum ({got['bytes']} bytes, expected "
                f"{exp.get('bytes')})")
    if task_ids is not None and want.get("task_ids") != list(task_ids):
      return f"{jsonl} holds tasks {want.get('task_ids')}, the plan says {list(task_ids)}"
    return None

  def shard_done(self, i: int, task_ids: Sequence[int] | None = None) -> bool:
    """Whether shard i is whole; a damaged one is named in the log and its files removed,
    so that the caller rebuilds it."""
    problem = self.shard_problem(i, task_ids)
    if problem is None:
      return True
    if problem != "missing":
      logging.warning("corpus shard %d is damaged (%s): rebuilding it", i, problem)
    for ext in ("sum.json", "jsonl", "npy"):  # the checksum record first: "not done"
      if os.path.exists(self._shard(i, ext)):
        os.remove(self._shard(i, ext))
    return False

  def write_shard(self, i: int, weights: np.ndarray, records: Sequence[dict]) -> None:
    """Writes shard i: weights, records, then the checksum record that marks it done."""
    if weights.shape[0] != len(records):
      raise ValueError(f"shard {i}: {weights.shape[0]} weight rows for {len(records)} records")
    atomic_save_npy(self._shard(i, "npy"), np.asarray(weights, np.float32))
    _write_jsonl(self._shard(i, "jsonl"), records)
    summ = {"rows": len(records), "task_ids": [r["task_id"] for r in records]}
    for ext in ("npy", "jsonl"):
      summ[f"{i:05d}.{ext}"] = file_digest(self._shard(i, ext))
    atomic_write_json(self._shard(i, "sum.json"), summ)  # last: marks the shard as done

  def finalize(self, num_shards: int) -> None:
    """Concatenates the shards into weights.npy and manifest.jsonl (atomically), then
    writes checksums.json, which marks the corpus finished."""
    missing = [i for i in range(num_shards) if self.shard_problem(i) is not None]
    if missing:
      raise ValueError(f"cannot finalize: shards {missing[:5]}... are missing or damaged")
    sums = os.path.join(self.path, CHECKSUMS_FILE)
    if os.path.exists(sums):  # unmark first: a crash below must not leave a stale record
      os.remove(sums)
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
    check = {"rows": rows, "columns": d}
    for name in ("weights.npy", "manifest.jsonl"):
      check[name] = file_digest(os.path.join(self.path, name))
    atomic_write_json(sums, check)


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


def verify_corpus_files(path: str, *, hash_files: bool = True) -> dict:
  """Checks a finished corpus's weights.npy and manifest.jsonl against checksums.json.

  Args:
    path: corpus directory.
    hash_files: also compare sha256 digests (else sizes only: for very large corpora).

  Returns:
    The checksums.json record.

  Raises:
    MissingError: the corpus is unfinished (no checksums.json).
    CorruptError: a file does not match; the message names it and how to rebuild.
  """
  sums_path = os.path.join(path, CHECKSUMS_FILE)
  if not os.path.exists(sums_path):
    raise MissingError(f"corpus at {path} is unfinished (no {CHECKSUMS_FILE}); rerun "
                       "make_corpus with the same --workdir to resume it")
  with open(sums_path) as f:
    sums = json.load(f)
  rebuild = (f"delete it and rerun launch/make_corpus.py with the same --workdir and "
             f"config: the corpus is rebuilt from its checksummed shards in {path}/shards")
  for name in ("weights.npy", "manifest.jsonl"):
    file = os.path.join(path, name)
    if not os.path.exists(file):
      raise CorruptError(f"corpus file {file} is missing; {rebuild}")
    size = os.path.getsize(file)
    if size != sums[name]["bytes"] or (hash_files and file_digest(file) != sums[name]):
      raise CorruptError(f"corpus file {file} is damaged ({size} bytes, its checksum "
                         f"record says {sums[name]['bytes']}); {rebuild}")
  return sums


def open_corpus(path: str, *, layout: ParamLayout | None = None,
                encoder_name: str | None = None, verify: bool = True) -> Corpus:
  """Opens a finished corpus, refusing one written for another layout or encoder, or one
  whose files fail their checksums.

  Args:
    path: corpus directory.
    layout: if given, the layout the caller's model has; a corpus with another layout is
      refused with a ValueError that names both.
    encoder_name: if given, the caller's text encoder; likewise refused on mismatch.
    verify: compare file digests with checksums.json (sizes, row counts and the
      record/row alignment are always checked).

  Returns:
    A Corpus (weights memory-mapped).
  """
  meta_path = os.path.join(path, "meta.json")
  if not os.path.exists(meta_path):
    raise MissingError(f"no corpus at {path} (missing meta.json); run "
                       "launch/make_corpus.py first")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ConfigError(f"corpus at {path} has format version {meta.get('format_version')}, "
                     f"this code reads version {FORMAT_VERSION}")
  stored = ParamLayout.from_json(meta["layout"])
  if layout is not None and layout != stored:
    raise ConfigError(f"corpus at {path} was written for another parameter layout: "
                     f"corpus {stored.fingerprint()} ({stored.describe()}) vs model "
                     f"{layout.fingerprint()} ({layout.describe()})")
  if encoder_name is not None and meta.get("encoder") != encoder_name:
    raise ConfigError(f"corpus at {path} was embedded with text encoder "
                     f"{meta.get('encoder')!r}, not {encoder_name!r}")
  legacy = ("config" not in meta and not os.path.exists(os.path.join(path, CHECKSUMS_FILE))
            and os.path.exists(os.path.join(path, "weights.npy")))
  if legacy:
    # Written by code from before checksums: readable (rows and records are still lined
    # up below), but nothing vouches for its bytes, and a resume of it is refused.
    logging.warning("corpus at %s predates checksums (no %s): its files are not verified; "
                    "rebuild it to get them", path, CHECKSUMS_FILE)
  sums = {} if legacy else verify_corpus_files(path, hash_files=verify)
  weights = np.load(os.path.join(path, "weights.npy"), mmap_mode="r")
  if weights.shape[1] != stored.total:
    raise CorruptError(f"corpus at {path}: weights have {weights.shape[1]} columns, its layout "
                     f"says {stored.total}")
  records = _read_jsonl(os.path.join(path, "manifest.jsonl"))
  # Records must line up with rows: row i is task i. A misaligned manifest labels every
  # later net with another task's classes, which nothing downstream could notice.
  ids = [r.get("task_id") for r in records]
  rows = sums.get("rows", weights.shape[0])
  if not len(records) == weights.shape[0] == rows or ids != list(range(len(ids))):
    raise CorruptError(f"corpus at {path}: {len(records)} records for {weights.shape[0]} "
                       f"weight rows ({rows} written), or task ids out of order; "
                       "rerun launch/make_corpus.py with the same --workdir to rebuild it")
  emb = np.load(os.path.join(path, "class_emb.npz"))
  return Corpus(path, meta, stored, weights, records, tuple(str(n) for n in emb["names"]),
                emb["embeddings"], np.load(os.path.join(path, "base.npy")))

"""The room sweep: how much a specialist beats the generalist, per subtask-net setting.

A weight generator is useful only where a net trained for the task beats the best single
net of the same size trained on all seen classes (the generalist). For each setting (a
corpus config: subtask family and size, task-size range), this builds a small corpus of
unseen tasks only, so the generalist and the early-stopped specialists are exactly those
the full corpus of that setting would have, and reports per setting: the generalist's and
the specialists' mean test accuracy on those tasks, the room (specialist - generalist,
paired by task, mean +- standard error, tasks won), the generalist's steps and seconds,
and the specialists' seconds per net.

Settings that share the generalist (same net, data, seen classes and generalist settings)
train it once, and adapter settings that share the frozen trunk train it and compute its
features once: the files are copied into the next setting's corpus directory, where
``make_corpus`` reads them back.
"""
import json
import logging
import os
import shutil
from typing import Sequence

import numpy as np

from t2w_jax import io as io_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import make_corpus as make_corpus_lib

_GENERALIST_FILES = ("base.npy", "generalist.json")
_TRUNK_FILES = ("trunk.npz", "features.npz")  # the adapter family's frozen trunk
_DATA_KEYS = ("dataset", "dataset_kwargs", "image_size", "text_encoder", "template", "seed",
              "heldout_frac", "val_per_class")


def _key(config, keys, model_keys=None) -> str:
  out = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
         for k in keys if k in config}
  if model_keys is not None:
    out["model"] = {k: config.model.get(k) for k in model_keys}
  return json.dumps(out, sort_keys=True)


def _generalist_key(config) -> str:
  """What the generalist depends on; settings with equal keys share it."""
  return _key(config, _DATA_KEYS + ("model", "base", "trunk_train"))


def _trunk_key(config) -> str:
  """What the adapter family's trunk and its features depend on."""
  return _key(config, _DATA_KEYS + ("trunk_train",),
              ("family", "trunk_widths", "trunk_strides", "logit_scale"))


def _seed_from(src: str | None, dest: str, files) -> None:
  """Copies a finished setting's files into a new setting's corpus directory."""
  if src is None or all(os.path.exists(os.path.join(dest, f)) for f in files):
    return
  os.makedirs(dest, exist_ok=True)
  for f in files:
    if os.path.exists(os.path.join(src, f)):
      shutil.copy(os.path.join(src, f), os.path.join(dest, f))


def room_of(records: Sequence[dict]) -> dict:
  """Paired room of specialist over generalist on a corpus's records (accuracies 0-1).

  Returns:
    generalist / specialist mean accuracy, room mean and s.e. in points, tasks won by the
    specialist (ties excluded), the specialists' mean kept step, and n.
  """
  g = np.array([r["base_acc"] for r in records], np.float64)
  s = np.array([r["trained_acc"] for r in records], np.float64)
  if len(g) == 0:
    raise ValueError("no records to measure the room on")
  d = 100.0 * (s - g)
  return {"n": int(len(d)), "generalist": float(g.mean()), "specialist": float(s.mean()),
          "room": float(d.mean()),
          "room_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0,
          "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0)),
          "specialist_steps": float(np.mean([r.get("steps", 0) for r in records]))}


def run_sweep(settings: Sequence[tuple[str, object]], out_dir: str) -> list[dict]:
  """Measures the room of every setting; resumable (finished settings are read back).

  Args:
    settings: (name, corpus config) pairs; each config's plan should hold unseen tasks
      only (num_seen = num_heldout = 0), the tasks the room is measured on.
    out_dir: one corpus directory per setting under it, and ``rows.json``.

  Returns:
    One row per setting: name, parameters per net, the ``room_of`` figures, generalist
    steps and seconds, specialist seconds per net.
  """
  rows, shared, trunks = [], {}, {}
  for i, (name, config) in enumerate(settings):
    workdir = os.path.join(out_dir, name)
    done = os.path.join(workdir, "room.json")
    if os.path.exists(done):
      with open(done) as f:
        row = json.load(f)
    else:
      dest = os.path.join(workdir, "corpus")
      _seed_from(shared.get(_generalist_key(config)), dest, _GENERALIST_FILES)
      if config.model.get("family") == "adapter":
        _seed_from(trunks.get(_trunk_key(config)), dest, _TRUNK_FILES)
      logging.info("room sweep: setting %d/%d %s", i + 1, len(settings), name)
      summary = make_corpus_lib.make_corpus(config, workdir)
      corpus = corpus_lib.open_corpus(dest)
      row = {"setting": name, "params": int(corpus.layout.total),
             **room_of(corpus.records),
             "generalist_steps": summary["generalist"]["steps"],
             "generalist_steps_run": summary["generalist"]["steps_run"],
             "generalist_seconds": summary["generalist"]["seconds"],
             "specialist_seconds_per_net": (summary["specialist_seconds"]
                                            / max(summary["specialists_trained"], 1))}
      io_lib.atomic_write_json(done, row)
    shared.setdefault(_generalist_key(config), os.path.join(workdir, "corpus"))
    if config.model.get("family") == "adapter":
      trunks.setdefault(_trunk_key(config), os.path.join(workdir, "corpus"))
    rows.append(row)
    logging.info("room sweep: %s room %+.1f ± %.1f points (generalist %.3f, specialist %.3f)",
                 name, row["room"], row["room_se"], row["generalist"], row["specialist"])
  io_lib.atomic_write_json(os.path.join(out_dir, "rows.json"), rows)
  return rows


def format_rows(rows: Sequence[dict]) -> str:
  """The sweep as a Markdown table."""
  lines = ["| setting | params | tasks | generalist | specialist | room (points ± s.e.) | "
           "won | generalist steps (s) | specialist s/net |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {r['setting']} | {r['params']:,} | {r['n']} | {100 * r['generalist']:.1f} | "
        f"{100 * r['specialist']:.1f} | {r['room']:+.1f} ± {r['room_se']:.1f} | "
        f"{r['wins']}/{r['n']} | {r['generalist_steps']} ({r['generalist_seconds']:.0f}) | "
        f"{r['specialist_seconds_per_net']:.2f} |")
  return "\n".join(lines)

"""Build a text–weight corpus: dataset → text embeddings → base net → task nets → disk.

``make_corpus(config, workdir)`` is what ``launch/make_corpus.py`` calls. It resumes: the
task plan, the base net and every finished shard are read back instead of recomputed, and
the result equals an uninterrupted run's (same shards, same seeds, same compiled programs).
"""
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from t2w_jax import data as data_lib
from t2w_jax import text as text_lib
from t2w_jax.data import tasks as tasks_lib
from t2w_jax.weights.layout import ParamLayout
from t2w_jax.zoo import base as base_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo import masstrain
from t2w_jax.zoo.cnn import init_params


def build_model(config, embed_dim: int, conv_impl: str | None = None):
  """The subtask net a corpus config describes (``family.build_subtask_net``)."""
  return family_lib.build_subtask_net(config.model, embed_dim,
                                      conv_impl or config.trainer.conv_impl)


def load_data(config):
  """The dataset of a corpus config at its training resolution."""
  return data_lib.load_dataset(config.dataset, data_dir=config.data_dir,
                               image_size=config.image_size, **config.dataset_kwargs)


def corpus_meta(config, layout: ParamLayout, encoder_name: str, dataset) -> dict:
  """What identifies a corpus: a reopened directory must match it exactly.

  ``model`` holds the family (so a corpus of one family is refused by a config of the
  other) and, for the adapter family, the trunk's shape; the trunk's training settings are
  added for that family only.
  """
  meta = {
      "layout": layout.to_json(), "encoder": encoder_name, "template": config.template,
      "dataset": config.dataset, "dataset_kwargs": config.dataset_kwargs.to_dict(),
      "num_classes": len(dataset.class_names),
      "image_size": config.image_size, "model": config.model.to_dict(),
      "trainer": config.trainer.to_dict(), "base": config.base.to_dict(),
      "seed": config.seed, "shard_size": config.shard_size,
  }
  if family_lib.family_of(config.model) == "adapter":
    meta["trunk_train"] = config.trunk_train.to_dict()
  return meta


def _plan(config, num_classes: int) -> tasks_lib.TaskPlan:
  return tasks_lib.make_plan(
      num_classes, num_seen=config.num_seen, num_unseen=config.num_unseen,
      num_heldout=config.num_heldout, min_classes=config.min_classes,
      max_classes=config.max_classes, heldout_frac=config.heldout_frac, seed=config.seed)


def make_corpus(config, workdir: str) -> dict:
  """Builds (or resumes) the corpus in ``workdir/corpus``.

  Args:
    config: a configs/corpus.py ConfigDict.
    workdir: run directory.

  Returns:
    Summary figures: per split mean base and trained accuracy, gain, nets, seconds.
  """
  start = time.time()
  path = os.path.join(workdir, "corpus")
  os.makedirs(path, exist_ok=True)
  dataset = load_data(config)
  names = dataset.class_names
  encoder = text_lib.get_encoder_with_fallback(config.text_encoder,
                                               config.get("text_fallback"))
  class_emb = text_lib.EmbeddingCache(encoder, template=config.template).get(names)
  logging.info("dataset %s: %d classes, %d train images at %dpx; text %s (d=%d)",
               config.dataset, len(names), len(dataset.train_labels), config.image_size,
               encoder.name, encoder.dim)

  model = build_model(config, encoder.dim)
  layout = ParamLayout.from_params(init_params(model, jax.random.PRNGKey(0), config.image_size))
  devices = jax.local_devices()
  mesh = masstrain.nets_mesh(devices[:config.num_devices] if config.num_devices else devices)
  spec = masstrain.TrainerSpec(
      steps=config.trainer.steps, batch_size=config.trainer.batch_size,
      learning_rate=config.trainer.learning_rate,
      nets_per_chunk=config.trainer.nets_per_chunk,
      eval_per_class=config.trainer.eval_per_class)
  unit = spec.nets_per_chunk * mesh.size
  shard = max(unit, int(math.ceil(config.shard_size / unit)) * unit)
  # The shard size depends on the mesh; it is part of the corpus's identity so that a
  # resume on another device count is refused instead of silently re-sharding.
  meta = dict(corpus_meta(config, layout, encoder.name, dataset), nets_per_shard=shard)
  writer = corpus_lib.CorpusWriter(path, meta)
  plan = _plan(config, len(names))
  plan_path = os.path.join(path, "plan.json")
  if not os.path.exists(plan_path):
    corpus_lib.atomic_write_json(plan_path, plan.to_json())
  emb_path = os.path.join(path, "class_emb.npz")
  if not os.path.exists(emb_path):
    corpus_lib.atomic_save_npz(emb_path, names=np.array(names), embeddings=class_emb)

  seen_classes = sorted(set(range(len(names))) - set(plan.heldout_classes))
  # The adapter family trains on the frozen trunk's cached features, not on the images.
  dataset = family_lib.prepare_data(config, path, dataset, class_emb, seen_classes)

  base_path = os.path.join(path, "base.npy")
  if os.path.exists(base_path):
    base_params = layout.unflatten(jnp.asarray(np.load(base_path)))
    logging.info("base net: read back from %s", base_path)
  else:
    base_params = base_lib.train_base(
        model, dataset.train_images, dataset.train_labels, class_emb, seen_classes,
        steps=config.base.steps, batch_size=config.base.batch_size,
        learning_rate=config.base.learning_rate, seed=config.seed)
    corpus_lib.atomic_save_npy(base_path, np.asarray(layout.flatten(base_params)))

  data = masstrain.put_data(dataset, class_emb, spec.eval_per_class, mesh)
  train = masstrain.make_trainer(model, spec, mesh)
  all_tasks = list(plan.tasks)
  num_shards = int(math.ceil(len(all_tasks) / shard))
  todo = [i for i in range(num_shards) if not writer.shard_done(i)]
  logging.info("%d nets in %d shards of %d (%d to do) on %d device(s), %d nets per vmap chunk",
               len(all_tasks), num_shards, shard, len(todo), mesh.size, spec.nets_per_chunk)

  bar = tqdm.tqdm(total=len(all_tasks), unit="net", desc="corpus",
                  initial=(num_shards - len(todo)) * shard if todo else len(all_tasks),
                  smoothing=0.1, mininterval=2.0)
  for i in todo:
    chunk = all_tasks[i * shard:(i + 1) * shard]
    padded = chunk + [chunk[-1]] * (shard - len(chunk))  # fixed shape: one compile
    ids, mask = tasks_lib.pad_tasks(padded, config.max_classes)
    seeds = np.array([t.seed for t in padded], np.uint32)
    out = train(data, base_params, masstrain.TaskBatch(ids, mask, seeds))
    weights = np.asarray(jax.vmap(layout.flatten)(out.params))[:len(chunk)]
    base_acc, acc, loss = (np.asarray(a) for a in (out.base_acc, out.trained_acc,
                                                   out.final_loss))
    records = [{"task_id": t.task_id, "split": t.split, "classes": [names[c] for c in t.class_ids],
                "class_ids": list(t.class_ids), "seed": t.seed,
                "base_acc": float(base_acc[j]), "trained_acc": float(acc[j]),
                "final_loss": float(loss[j])} for j, t in enumerate(chunk)]
    writer.write_shard(i, weights, records)
    bar.update(len(chunk))
  bar.close()
  writer.finalize(num_shards)
  summary = summarize(corpus_lib.open_corpus(path).records)
  summary["seconds"] = time.time() - start
  corpus_lib.atomic_write_json(os.path.join(path, "summary.json"), summary)
  return summary


def summarize(records) -> dict:
  """Per split: nets, mean base accuracy, mean trained accuracy, mean gain (points)."""
  out = {"nets": len(records)}
  for split in tasks_lib.SPLITS + ("all",):
    rs = [r for r in records if split == "all" or r["split"] == split]
    if not rs:
      continue
    b = np.array([r["base_acc"] for r in rs])
    t = np.array([r["trained_acc"] for r in rs])
    out[split] = {"nets": len(rs), "base_acc": float(b.mean()), "trained_acc": float(t.mean()),
                  "gain_points": float(100 * (t - b).mean()),
                  "trained_acc_max": float(t.max())}
  return out


def format_summary(summary: dict) -> str:
  """A small Markdown table of a corpus summary."""
  lines = ["| split | nets | base acc | trained acc | gain (points) |",
           "|---|---:|---:|---:|---:|"]
  for split in tasks_lib.SPLITS + ("all",):
    if split in summary:
      s = summary[split]
      lines.append(f"| {split} | {s['nets']} | {s['base_acc']:.3f} | {s['trained_acc']:.3f} | "
                   f"{s['gain_points']:+.1f} |")
  if "seconds" in summary:
    lines.append(f"\n{summary['nets']} nets in {summary['seconds']:.0f} s")
  return "\n".join(lines)

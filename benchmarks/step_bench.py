"""The generator's train step with and without the task loss, timed in one run.

    python launch/bench.py step --workdir runs/default [--json PATH]

Builds the real sharded step (``train.loop.compile_step``) on an existing corpus for each
setting, all from the same DiT config: the diffusion loss alone (``task_loss_weight=0``),
the task loss without fresh tasks, with the config's ``fresh_tasks`` (64 when it has none)
at the chain's start only, and with them along the chain too (``fresh_chain``). Each
setting is timed as ``steps`` steps per repeat, after a warm-up, on the same batches; the
ratio of each setting's seconds per step to the diffusion-only step's is the cost of the
task loss.
"""
import logging
import os
import time

import jax
import ml_collections

from benchmarks import harness
from t2w_jax.train import loop
from t2w_jax.train import mesh as mesh_lib


def settings(config: ml_collections.ConfigDict) -> dict:
  """{name: dit config} of the timed settings, diffusion-only first."""
  def variant(**overrides):
    c = ml_collections.ConfigDict(config.to_dict())
    c.update(overrides)
    return c

  weight = config.task_loss_weight or 1.0
  out = {"diffusion only": variant(task_loss_weight=0.0)}
  fresh = int(config.fresh_tasks) or 64
  out["+ task loss, 0 fresh tasks"] = variant(task_loss_weight=weight, fresh_tasks=0)
  out[f"+ task loss, {fresh} fresh tasks"] = variant(task_loss_weight=weight,
                                                     fresh_tasks=fresh, fresh_chain=False)
  out[f"+ task loss, {fresh} fresh tasks along the chain"] = variant(
      task_loss_weight=weight, fresh_tasks=fresh, fresh_chain=True)
  return out


def time_setting(config, corpus, workdir: str, *, steps: int, repeats: int) -> dict:
  """Seconds per step (median over repeats) of one setting's compiled step."""
  spec = loop.load_or_make_spec(config, workdir, corpus)
  mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.model)
  state, shardings = loop.create_sharded_state(spec, config, mesh)
  step_fn = loop.compile_step(spec, config, mesh, shardings)
  data = loop.put_task_images(config, corpus, mesh)
  batches = loop.training_batches(config, corpus)
  feed = [loop.put_batch(batches(i), mesh) for i in range(steps)]
  times, no_vote = [], loop.put_stop_votes(None, mesh)
  with mesh_lib.activate(mesh):
    state, m, _ = step_fn(state, feed[0], data, no_vote)  # compile + warm-up
    jax.block_until_ready(m)
    for _ in range(repeats):
      t0 = time.perf_counter()
      for b in feed:
        state, m, _ = step_fn(state, b, data, no_vote)
      jax.block_until_ready(m)
      times.append((time.perf_counter() - t0) / steps)
  return {"seconds_per_step": harness.median(times), "seconds": times,
          "batch_size": config.batch_size, "task_images": config.task_images,
          "fresh_tasks": int(config.fresh_tasks) if config.task_loss_weight > 0 else 0}


def run(config: ml_collections.ConfigDict, workdir: str, *, steps: int = 10,
        repeats: int = 3) -> dict:
  """Times every setting of ``settings(config)`` on the corpus in ``workdir/corpus``."""
  corpus = loop.open_training_corpus(config, workdir)
  scratch = os.path.join(workdir, "bench_step")
  os.makedirs(scratch, exist_ok=True)
  out = {"machine": harness.machine_info(), "steps": steps, "repeats": repeats,
         "corpus": corpus.path, "settings": {}}
  for name, c in settings(config).items():
    logging.info("step bench: %s", name)
    out["settings"][name] = time_setting(c, corpus, scratch, steps=steps, repeats=repeats)
  ref = out["settings"]["diffusion only"]["seconds_per_step"]
  for r in out["settings"].values():
    r["cost_vs_diffusion_only"] = r["seconds_per_step"] / ref
  return out


def format_report(r: dict) -> str:
  """Markdown table of ``run``'s result."""
  rows = [[name, f"{1e3 * s['seconds_per_step']:.1f}", f"{1 / s['seconds_per_step']:.2f}",
           f"{s['cost_vs_diffusion_only']:.2f}x"] for name, s in r["settings"].items()]
  return "\n".join([
      f"Generator train step on {harness.describe_machine(r['machine'])}",
      f"(median of {r['repeats']} repeats of {r['steps']} steps; corpus {r['corpus']})", "",
      harness.format_table(["setting", "ms/step", "steps/s", "cost vs diffusion only"], rows)])

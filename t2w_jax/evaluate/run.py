"""``evaluate(config, workdir)``: runs the configured evaluators and writes the report.

The config (``configs/eval.py``) names its evaluators in ``config.evals``, big_vision
style: each entry ``config.evals.<key>`` is a ConfigDict whose ``type`` is a registered
evaluator name (``registry.names()``) and whose other fields are that evaluator's options.
Every evaluator is called with its entry's fields (minus ``type``) as keyword arguments;
a field left at None (a placeholder) is not passed, so the evaluator's own default (in its
signature, the one place defaults live) applies. ``splits``, ``max_tasks`` (from the top
level) and ``out_dir`` (WORKDIR/eval) are added for the evaluators that take them where the
entry does not set them. Each gets a PRNG key folded from ``config.seed`` and ``<key>``, so
results do not depend on evaluator order.

Writes WORKDIR/eval/results.json (every figure) and WORKDIR/eval/table.md. In a
multi-process run (``t2w_jax/multihost.py``) every process evaluates alike, and process 0
writes them.
"""
import logging
import os
import tempfile
import time
import zlib

import jax
import ml_collections

from t2w_jax import multihost
from t2w_jax.evaluate import registry
from t2w_jax.evaluate import report
from t2w_jax.evaluate.context import EvalContext

# Filled into each evaluator's config when it does not set them itself.
_INHERITED = ("splits", "max_tasks")


def evaluator_rng(seed: int, key: str):
  """The PRNG key of evaluator entry ``key``: independent of the entries' order."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(key.encode()) & 0x7FFFFFFF)


def _entries(config) -> list[tuple[str, registry.Evaluator, ml_collections.ConfigDict]]:
  evals = config.get("evals", None)
  if not evals:
    raise ValueError("config.evals is empty: name at least one evaluator; known: "
                     + ", ".join(registry.names()))
  out = []
  for key in evals:
    entry = evals[key]
    typ = entry.get("type", None) if hasattr(entry, "get") else None
    if not typ:
      raise ValueError(f"config.evals.{key} has no 'type' (the evaluator's registered name)")
    ev = registry.get(typ)
    ev.check_options(k for k in entry if k != "type")  # a misspelt option fails now
    out.append((key, ev, entry))
  return out


def evaluator_options(ev: registry.Evaluator, entry, config, out_dir: str) -> dict:
  """The keyword arguments of one evaluator entry.

  Args:
    ev: the registered evaluator.
    entry: ``config.evals.<key>``.
    config: the whole eval config (for the inherited ``splits`` and ``max_tasks``).
    out_dir: WORKDIR/eval.

  Returns:
    The entry's fields minus ``type`` and minus those left at None, plus the inherited
    ones the evaluator takes and the entry does not set.
  """
  d = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
  options = {k: v for k, v in d.items() if k != "type" and v is not None}
  takes = ev.options
  for name in _INHERITED:
    if name in takes and name not in d and config.get(name, None) is not None:
      options[name] = config[name]
  if "out_dir" in takes and "out_dir" not in d:
    options["out_dir"] = out_dir
  return options


def _load_generator(config, workdir: str, needed: bool, corpus_meta: dict):
  from t2w_jax import api  # local: only when there is a generator to load
  gen_dir = config.get("generator_dir", None) or workdir
  if not os.path.exists(os.path.join(gen_dir, "generator.json")):
    if needed:
      raise FileNotFoundError(f"no trained generator in {gen_dir} (missing generator.json); "
                              "train one with launch/train.py, or evaluate baselines only")
    return None, gen_dir
  gen = api.load(gen_dir)
  if gen.spec.encoder != corpus_meta.get("encoder"):
    raise ValueError(f"generator in {gen_dir} uses text encoder {gen.spec.encoder!r}, the "
                     f"corpus {corpus_meta.get('encoder')!r}")
  return gen, gen_dir


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every evaluator of ``config.evals`` and writes the results.

  Args:
    config: see ``configs/eval.py``.
    workdir: the run directory; the corpus is read from ``config.corpus_dir`` or
      WORKDIR/corpus, the generator from ``config.generator_dir`` or WORKDIR.

  Returns:
    The results dict: ``meta`` (dirs, seed, generator step, timings), ``evals``
    (``<key>`` -> that evaluator's dict plus its ``type``) and ``table`` (the Markdown
    text also written to WORKDIR/eval/table.md; results.json holds everything else).
  """
  multihost.initialize()
  entries = _entries(config)  # unknown names fail before any work
  corpus_dir = config.get("corpus_dir", None) or os.path.join(workdir, "corpus")
  if multihost.is_primary():
    out_dir = os.path.join(workdir, "eval")
  else:
    # Every process of a multi-process run evaluates alike on its own devices; process 0
    # writes the report; the others write theirs to a scratch directory, removed when
    # this function returns.
    scratch = tempfile.TemporaryDirectory(prefix=f"t2w_eval_{jax.process_index()}_")
    out_dir = scratch.name
  from t2w_jax.zoo import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  meta_corpus = corpus_lib.open_corpus(corpus_dir).meta
  gen, gen_dir = _load_generator(config, workdir, any(e.needs_generator for _, e, _ in entries),
                                 meta_corpus)
  ctx = EvalContext.create(corpus_dir, gen=gen, eval_per_class=config.get("eval_per_class", None),
                           chunk=int(config.get("chunk", 32)))
  if gen is not None and gen.layout != ctx.corpus.layout:
    raise ValueError(f"generator in {gen_dir} makes nets of layout {gen.layout.describe()}, "
                     f"the corpus holds {ctx.corpus.layout.describe()}")
  seed = int(config.get("seed", 0))
  results = {"meta": {"corpus_dir": os.path.abspath(corpus_dir),
                      "generator_dir": os.path.abspath(gen_dir) if gen is not None else None,
                      "generator_step": getattr(gen, "step", None), "seed": seed,
                      "config": config.to_dict(), "seconds": {}},
             "evals": {}}
  for key, ev, entry in entries:
    options = evaluator_options(ev, entry, config, out_dir)
    t0 = time.time()
    logging.info("evaluator %s (%s) ...", key, ev.name)
    res = ev(ctx, evaluator_rng(seed, key), **options)
    results["evals"][key] = {"type": ev.name, **res}
    results["meta"]["seconds"][key] = round(time.time() - t0, 2)
    logging.info("evaluator %s done in %.1fs", key, time.time() - t0)
  results["table"] = report.render(results)
  report.write(results, out_dir)
  return results

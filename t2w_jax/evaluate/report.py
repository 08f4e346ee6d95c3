"""Writes evaluation results: strict JSON of every figure and a Markdown table.

``render(results)`` turns the results dict of ``run.evaluate`` into Markdown:

* the main table: one row per method (generated mean of K, generated best-of-K, the
  generalist, random init, mean of seen weights, NN retrieval, ridge, the specialist (the
  "oracle" key: each task's own corpus net)), one column per split,
  cells "mean ± std" of test accuracy in percent over the split's tasks;
* the generated nets' per-task paired differences from each baseline (mean ± standard
  error, wins), gap closure lines (per-task averaged and from split means), novelty lines;
* the sampler-ablation and free-form tables when those evaluators ran;
* any evaluator's own ``"markdown"`` string, verbatim (how other evaluators add sections).
"""
import json
import math
import os
from typing import Any

from t2w_jax.io import atomic_write_bytes

_ROW_LABELS = {
    "generalist": "generalist (same net, all seen classes, early-stopped)",
    "random": "random init",
    "mean_weights": "mean of seen corpus weights",
    "nn_retrieval": "NN retrieval (closest fused text)",
    "ridge": "ridge (text → weights)",
    "oracle": "specialist (trained on the task from the generalist, early-stopped)",
}


_HYPERNET_LABEL = "plain hypernetwork (text → weight delta, task loss only, no corpus)"


def _method(result: dict | None, split: str, method: str) -> dict | None:
  """A method's statistics in an evaluator's result (``splits.<split>.methods.<method>``)."""
  return ((result or {}).get("splits", {}).get(split, {}).get("methods", {}).get(method))


def to_jsonable(obj: Any) -> Any:
  """numpy scalars/arrays -> Python; NaN/inf -> None (strict JSON); tuples -> lists."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "tolist"):  # numpy arrays and scalars
    return to_jsonable(obj.tolist())
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if obj is None or isinstance(obj, (bool, int, str)):
    return obj
  return str(obj)


def _pct(x) -> str:
  return "–" if x is None else f"{100.0 * x:.1f}"


def _cell(d: dict | None) -> str:
  if not d or d.get("mean") is None:
    return "–"
  return f"{_pct(d['mean'])} ± {_pct(d.get('std'))}"


def _num(x) -> str:
  return "–" if x is None else f"{x:.3g}"


def _ratio(x) -> str:
  return "–" if x is None else f"{x:.2f}"


def _find(results: dict, typ: str) -> dict | None:
  for v in results.get("evals", {}).values():
    if v.get("type") == typ:
      return v
  return None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return out


def _section(title: str, intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
  """A report section: a blank line, "## title", the intro paragraph, then the table."""
  return ["", f"## {title}", "", intro, ""] + _table(header, rows)


def _main_table(results: dict) -> list[str]:
  base = _find(results, "baselines")
  gen = _find(results, "generated")
  splits = []
  for src in (gen, base):
    for s in (src or {}).get("splits", {}):
      if s not in splits:
        splits.append(s)
  if not splits:
    return []

  def n_of(s):
    for src in (gen, base):
      if src and s in src["splits"]:
        return src["splits"][s]["n_tasks"]
    return "?"

  header = ["method"] + [f"{s} (n={n_of(s)})" for s in splits]
  rows = []
  if gen:
    k = gen.get("num_samples")
    g = gen["splits"]
    rows.append([f"**generated** (mean of K={k})"] + [_cell(g.get(s)) for s in splits])
    rows.append([f"**generated** (best of K={k})"]
                + [_cell((g.get(s) or {}).get("best_of_k")) for s in splits])
    if any("weight_average" in (g.get(s) or {}) for s in splits):
      rows.append([f"**generated** (weight average of its K={k} samples)"]
                  + [_cell((g.get(s) or {}).get("weight_average")) for s in splits])
  hyper = _find(results, "hypernet")
  hyper_row = ([_HYPERNET_LABEL] + [_cell(_method(hyper, s, "hypernet")) for s in splits]
               if hyper else None)
  if base:
    for m, label in _ROW_LABELS.items():
      if m == "ridge":
        label = f"ridge (text → weights, λ={base.get('ridge_lambda', 0):g})"
      if m == "oracle" and hyper_row:
        rows.append(hyper_row)
      rows.append([label] + [_cell(_method(base, s, m)) for s in splits])
  elif gen:  # no baselines evaluator: still show the generalist and the specialist
    for m in ("generalist", "oracle"):
      rows.append([_ROW_LABELS[m]] + [_cell(gen["splits"].get(s, {}).get(m)) for s in splits])
  if hyper_row and not base:
    rows.append(hyper_row)
  lines = ["## Test accuracy (%) of each method on each split's tasks", "",
           "Cells: mean ± std over the split's tasks of each task's test accuracy. "
           "unseen = new combinations of seen classes; heldout = tasks with held-out "
           "classes. Both splits' corpus nets are the specialists and were never used to "
           "train the generator (it trains on the seen split only)."]
  if gen:
    lines.append(f"Generated nets: {gen['sampler']} with {gen['steps']} steps, guidance "
                 f"{gen['guidance']:g}, temperature {gen.get('temperature', 1.0):g}; per task, "
                 f"the mean (or the best) of K={gen['num_samples']} samples.")
  lines += [""] + _table(header, rows)
  if gen:
    lines += ["", "Spread of the K samples within a task (std, averaged over tasks): "
              + ", ".join(f"{s} {_pct(gen['splits'][s]['sample_std'])}"
                          for s in splits if s in gen["splits"]) + "."]
  return lines


def paired_difference(a, b) -> dict | None:
  """Per-task paired comparison of two methods on the same tasks.

  Args:
    a, b: (n,) per-task accuracies of the two methods, task i in both.

  Returns:
    ``mean`` of a - b, its standard error ``se`` (sample std / sqrt(n); None for n < 2),
    ``wins`` (tasks where a > b) and ``n``; None if the lengths differ or are 0.
  """
  if not a or not b or len(a) != len(b):
    return None
  d = [float(x) - float(y) for x, y in zip(a, b)]
  n = len(d)
  mean = sum(d) / n
  se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else None
  return {"mean": mean, "se": se, "wins": sum(x > 0 for x in d), "n": n}


def paired_cell(p: dict | None) -> str:
  """A ``paired_difference`` in points of accuracy: "+1.2 ± 0.3 (3/4)" (mean ± standard
  error (wins / n)); "–" for None."""
  if p is None:
    return "–"
  se = "" if p["se"] is None else f" ± {_pct(p['se'])}"
  return f"{100.0 * p['mean']:+.1f}{se} ({p['wins']}/{p['n']})"


def _paired_lines(results: dict) -> list[str]:
  gen, base = _find(results, "generated"), _find(results, "baselines")
  if not gen or not base:
    return []
  splits = [s for s in gen["splits"] if s in base["splits"]]

  hyper = _find(results, "hypernet")

  def cell(s, m, src=base):
    return paired_cell(paired_difference(gen["splits"][s].get("per_task"),
                                         (_method(src, s, m) or {}).get("per_task")))

  rows = [[_ROW_LABELS[m].split(" (")[0]] + [cell(s, m) for s in splits]
          for m in ("generalist", "mean_weights", "nn_retrieval", "ridge", "oracle")]
  if hyper:
    rows.insert(-1, [_HYPERNET_LABEL.split(" (")[0]]
                + [cell(s, "hypernet", hyper) for s in splits])
  return _section("Generated (mean of K) minus each method, paired by task",
                  "Points of test accuracy: mean over tasks of (generated − method) ± its "
                  "standard error, and (tasks where generated is higher / tasks). A difference "
                  "within about two standard errors of 0 is a tie.", ["method"] + splits, rows)


def _gap_lines(results: dict) -> list[str]:
  gen = _find(results, "generated")
  base = _find(results, "baselines")
  if not gen and not base:
    return []
  splits = list((gen or base)["splits"])
  rows = []
  min_den = (base or {}).get("min_denominator")
  if gen:
    g = gen["splits"]
    min_den = g[splits[0]]["gap_closure"]["min_denominator"]
    rows += [
        ["generated (mean of K), per-task ratios averaged"]
        + [f"{_ratio(g[s]['gap_closure']['per_task_mean'])} "
           f"({g[s]['gap_closure']['tasks_used']}/{g[s]['gap_closure']['tasks']} tasks)"
           for s in splits],
        ["generated (mean of K), from split means"]
        + [_ratio(g[s]["gap_closure"]["from_means"]) for s in splits],
        ["generated (best of K), per-task ratios averaged"]
        + [_ratio(g[s]["gap_closure_best_of_k"]["per_task_mean"]) for s in splits],
        ["generated (best of K), from split means"]
        + [_ratio(g[s]["gap_closure_best_of_k"]["from_means"]) for s in splits],
    ]
    if all("weight_average" in g[s] for s in splits):
      rows.append(["generated (weight average of K), from split means"]
                  + [_ratio(g[s]["weight_average"]["gap_closure"]["from_means"])
                     for s in splits])
  hyper = _find(results, "hypernet")
  if hyper:
    rows.append([f"{_HYPERNET_LABEL.split(' (')[0]}, from split means"]
                + [_ratio(hyper["splits"].get(s, {}).get("gap_closure_from_means"))
                   for s in splits])
  if base:
    for m in ("nn_retrieval", "ridge", "mean_weights"):
      rows.append([f"{_ROW_LABELS[m].split(' (')[0]}, from split means"]
                  + [_ratio(base["splits"].get(s, {}).get("gap_closure_from_means", {}).get(m))
                     for s in splits])
  return _section("Room closed: (x − generalist) / (specialist − generalist)",
                  "0 = no better than the generalist, 1 = as good as the task's specialist "
                  "(negative: worse than the generalist). "
                  "'per-task ratios averaged' averages each task's ratio over the tasks with "
                  f"|specialist − generalist| ≥ {min_den:g} (count shown); 'from split means' "
                  "divides the split-mean differences (all tasks). – : the denominator is "
                  "below that threshold (the specialist is not measurably better than the "
                  "generalist), so the ratio is noise.", ["quantity"] + splits, rows)


def _novelty_lines(results: dict) -> list[str]:
  gen = _find(results, "generated")
  if not gen:
    return []
  splits = [s for s in gen["splits"] if "novelty" in gen["splits"][s]]
  if not splits:
    return []
  nv = {s: gen["splits"][s]["novelty"] for s in splits}
  rows = [
      ["L2 distance of a generated net to its nearest seen net (mean)"]
      + [_num(nv[s]["nn_distance_mean"]) for s in splits],
      ["… relative to the seen nets' median nearest-neighbour distance (mean / min)"]
      + [f"{_ratio(nv[s]['relative_mean'])} / {_ratio(nv[s]['relative_min'])}" for s in splits],
      ["specialist's distance to its nearest seen net, relative (reference)"]
      + [_ratio(nv[s]["oracle_relative_mean"]) for s in splits],
      ["test-prediction agreement with that nearest seen net (%)"]
      + [_pct(nv[s]["agreement_with_nearest_mean"]) for s in splits],
      ["specialist's agreement with ITS nearest seen net (%, reference)"]
      + [_pct(nv[s].get("oracle_agreement_with_nearest_mean")) for s in splits],
      ["test-prediction agreement with the specialist (%)"]
      + [_pct(nv[s]["agreement_with_oracle_mean"]) for s in splits],
      ["accuracy of that nearest seen net on the task (%)"]
      + [_pct(nv[s]["nearest_seen_acc_mean"]) for s in splits],
  ]
  return _section("Novelty of the generated nets",
                  "A generator that memorises its training nets gives relative distances near "
                  "0 and near-100% agreement with the nearest seen net; the specialist (a "
                  "genuinely new net for the task) shows what a new net's distance looks like.",
                  ["quantity"] + splits, rows)


def _ablation_lines(results: dict) -> list[str]:
  ab = _find(results, "sampler_ablation")
  if not ab:
    return []
  rows = [[r["sampler"], str(r["steps"]), f"{r['guidance']:g}",
           f"{r.get('temperature', 1.0):g}",
           f"{_pct(r['mean'])} ± {_pct(r['std'])}", _pct(r["best_of_k"]),
           _ratio(r["gap_closure_from_means"]), f"{r['seconds']:.1f}"] for r in ab["rows"]]
  lines = ["", f"## Sampler ablation ({ab['split']}, {ab['n_tasks']} tasks × "
           f"{ab['num_samples']} samples; generalist {_pct(ab['base_mean'])}, specialist "
           f"{_pct(ab['oracle_mean'])})", ""]
  lines += _table(["sampler", "steps", "guidance", "temperature", "accuracy (%)",
                   "best-of-K (%)", "room closed", "wall s*"], rows)
  lines += ["", "Temperature: scale of the starting noise (1 = the trained prior; DDIM at 0 "
            "is deterministic, so its K samples coincide).",
            "*Wall seconds of the sampling call, including its compilation unless an "
            "earlier evaluator compiled the same setting and batch size."]
  if ab.get("skipped"):
    lines += ["", "Skipped: " + "; ".join(ab["skipped"]) + "."]
  return lines


def _freeform_lines(results: dict) -> list[str]:
  ff = _find(results, "freeform")
  if not ff:
    return []
  rows = []
  for v, r in ff["variants"].items():
    ex = r["examples"][0]["text"] if r["examples"] else ""
    if v == "other_prompt":
      ex += " (prompt per class differs from training)"
    rows.append([v, f"“{ex}”", f"{_pct(r['mean'])} ± {_pct(r['std'])}", _pct(r["best_of_k"]),
                 "–" if r["parsed_exactly"] is None else _pct(r["parsed_exactly"])])
  return _section(
      f"Free-form descriptions ({ff['split']}, {ff['n_tasks']} tasks × {ff['num_samples']} "
      f"samples; generalist {_pct(ff.get('base_mean'))}, specialist "
      f"{_pct(ff.get('oracle_mean'))})",
      "The same tasks described as a user might type them. 'sentence': the text is parsed "
      "into class names (lead-in phrase dropped, split on commas/and/or/vs, articles "
      "dropped, plurals singularised), each put in the training prompt; "
      "'sentence_no_singular': plurals kept; 'other_prompt': the clean class names in a "
      "prompt the generator never saw; 'whole_sentence': the sentence as ONE text token. "
      "Accuracy is always on the task's true classes; all variants share noise.",
      ["variant", "example", "accuracy (%)", "best-of-K (%)",
       "class names parsed exactly (%)"], rows)


def render(results: dict) -> str:
  """The Markdown report of a results dict (see module docstring)."""
  results = to_jsonable(results)  # NaN -> None: every formatter shows None as "–"
  meta = results.get("meta", {})
  lines = ["# t2w_jax evaluation", ""]
  if meta:
    lines.append(f"Corpus `{meta.get('corpus_dir')}`; generator `{meta.get('generator_dir')}` "
                 f"(step {meta.get('generator_step')}); seed {meta.get('seed')}.")
    lines.append("")
  lines += (_main_table(results) + _paired_lines(results) + _gap_lines(results)
            + _novelty_lines(results))
  lines += _ablation_lines(results) + _freeform_lines(results)
  for key, v in results.get("evals", {}).items():
    if isinstance(v.get("markdown"), str) and v["markdown"].strip():
      lines += ["", v["markdown"].rstrip()]
  return "\n".join(lines).rstrip() + "\n"


def write(results: dict, out_dir: str) -> tuple[str, str]:
  """Writes ``results.json`` (strict JSON) and ``table.md`` atomically into ``out_dir``.

  Returns:
    (json path, markdown path).
  """
  os.makedirs(out_dir, exist_ok=True)
  jpath = os.path.join(out_dir, "results.json")
  mpath = os.path.join(out_dir, "table.md")
  clean = to_jsonable({k: v for k, v in results.items() if k != "table"})
  atomic_write_bytes(jpath, (json.dumps(clean, indent=1, allow_nan=False) + "\n").encode())
  atomic_write_bytes(mpath, render(results).encode())
  return jpath, mpath

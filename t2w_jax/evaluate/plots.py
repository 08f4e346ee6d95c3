"""Plots of the evaluation figures (matplotlib, Agg backend: no display needed).

Each function takes the results dict its evaluator returns and writes one PNG atomically
(temporary name, then ``os.replace``), so a reader never sees half a file.
"""
import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

# One colour per method, stable across plots.
_COLORS = {"generated": "tab:blue", "generalist": "tab:orange", "random": "tab:gray",
           "oracle": "tab:green", "specialist": "tab:green", "average": "tab:red",
           "aligned": "tab:purple", "parent_a": "tab:brown", "parent_b": "tab:pink",
           "ensemble": "tab:olive", "nearest": "tab:cyan"}


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.png"
  try:
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
  finally:
    plt.close(fig)
  os.replace(tmp, path)
  return path


def plot_finetune_curves(results: Mapping, path: str) -> str:
  """Test accuracy against fine-tuning steps, mean ± std band per method.

  Args:
    results: ``{"steps": [...], "curves": {method: {"mean": [...], "std": [...]}},
      "num_tasks": n}``, as ``finetune.finetune_curves`` returns.
    path: the PNG to write.

  Returns:
    ``path``.
  """
  steps = np.asarray(results["steps"])
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for method, c in results["curves"].items():
    mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
    color = _COLORS.get(method)
    ax.plot(steps, mean, label=method, color=color, marker="o", markersize=3)
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
  ax.set_xlabel("fine-tuning steps")
  ax.set_ylabel("test accuracy")
  ax.set_ylim(0.0, 1.0)
  ax.grid(alpha=0.3)
  ax.set_title(f"Fine-tuning on {results.get('num_tasks', '?')} unseen tasks (mean ± std)")
  ax.legend()
  return _save(fig, path)


def plot_enhancement(results: Mapping, path: str) -> str:
  """Accuracy after noising to t and denoising (one DDIM step count), per input kind,
  against t; the input's own accuracy dashed.

  Args:
    results: as ``enhance.enhance`` returns: ``settings`` [(family, label)] and
      ``inputs {kind: {"before": acc, "sweep": [acc per setting]}}``.
    path: the PNG to write.

  Returns:
    ``path``.
  """
  settings = [tuple(s) for s in results["settings"]]
  # The denoise settings with the first step count (and t = 0, which has none).
  steps_label = next((lab.split(", ")[1] for f, lab in settings
                      if f == "denoise" and ", " in lab), None)
  idx = [i for i, (f, lab) in enumerate(settings) if f == "denoise"
         and (", " not in lab or lab.split(", ")[1] == steps_label)]
  ts = [int(settings[i][1].split(",")[0][2:]) for i in idx]
  fig, ax = plt.subplots(figsize=(6, 3.8))
  cmap = plt.get_cmap("tab10")
  for j, (kind, r) in enumerate(results["inputs"].items()):
    color = cmap(j % 10)
    ax.plot(ts, [100 * r["sweep"][i] for i in idx], marker="o", color=color, label=kind)
    ax.axhline(100 * r["before"], linestyle="--", color=color, linewidth=0.8)
  ax.set_xscale("symlog", linthresh=5)
  ax.set_xlabel(f"noise level t (DDIM, {steps_label or 'one step'})")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.set_title("Weight enhancement (dashed: the input net)")
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_fewshot(results: Mapping, path: str) -> str:
  """Test accuracy of ``api.few_shot``'s nets against shots per class, one panel per split,
  one line per start (mean ± s.e. over tasks); dotted: the start itself, not fine-tuned.

  Args:
    results: ``{"splits", "methods", "start": {split: {method: {"per_task"}}}, "per_k":
      {label: {"early_stopped": {split: {method: {"per_task"}}}}}}``, as
      ``fewshot.fewshot`` returns.
    path: the PNG to write.

  Returns:
    ``path``.
  """
  ks = list(results["per_k"])
  splits = results["splits"]
  fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), squeeze=False,
                           sharey=True)
  x = np.arange(len(ks))
  for ax, s in zip(axes[0], splits):
    for method in results["methods"]:
      acc = [np.asarray(results["per_k"][k]["early_stopped"][s][method]["per_task"])
             for k in ks]
      mean = np.array([100 * a.mean() for a in acc])
      se = np.array([100 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
                     for a in acc])
      color = _COLORS.get(method)
      ax.errorbar(x, mean, yerr=se, label=method, color=color, marker="o", markersize=3,
                  capsize=2)
      start = 100 * np.mean(results["start"][s][method]["per_task"])
      ax.axhline(start, color=color, linestyle=":", linewidth=1)
    ax.set_xticks(x, [f"{k}" for k in ks])
    ax.set_title(f"{s} tasks")
    ax.set_xlabel("labelled images per class")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test accuracy (%) after api.few_shot")
  axes[0][0].legend(fontsize=8)
  return _save(fig, path)


def plot_fusion(results: Mapping, path: str) -> str:
  """Bar chart: accuracy on the union's classes per method (mean ± std over pairs).

  Args:
    results: ``{"methods": {name: {"mean": float, "std": float, "size": int}}}``, as
      ``fusion.fusion`` returns; a method of size > 1 (nets' worth of parameters) is
      labelled with it.
    path: the PNG to write.

  Returns:
    ``path``.
  """
  methods = results["methods"]
  names = list(methods)
  means = [methods[n]["mean"] for n in names]
  stds = [methods[n]["std"] for n in names]
  labels = [n + (f" ({methods[n]['size']}× params)" if methods[n].get("size", 1) > 1 else "")
            for n in names]
  # The independent parents' merges share their corpus counterparts' colours, hatched.
  colors = [_COLORS.get(n.removeprefix("indep_"), "tab:cyan") for n in names]
  fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 3.5))
  bars = ax.bar(labels, means, yerr=stds, capsize=3, color=colors)
  for bar, n in zip(bars, names):
    if n.startswith("indep_"):
      bar.set_hatch("//")
  ax.set_ylabel("accuracy on A ∪ B")
  ax.set_ylim(0.0, 1.0)
  ax.tick_params(axis="x", labelrotation=45)
  plt.setp(ax.get_xticklabels(), ha="right")
  ax.grid(axis="y", alpha=0.3)
  ax.set_title(f"Text-guided fusion over {results.get('num_pairs', '?')} task pairs")
  return _save(fig, path)


def plot_scaling(points: Mapping, path: str) -> str:
  """The room closed by the generated nets, (generated − generalist) / (specialist −
  generalist), against the number of corpus nets, one line per split and DiT size; 0 (the
  generalist) and 1 (the specialists) dashed, and any reference method's room dotted.

  Args:
    points: ``{"splits": {split: {"series": {label: [[num_nets, room_closed], ...]},
      "references": {label: room_closed}}}}`` ("references" optional: methods that use no
      corpus, such as the plain hypernetwork).
    path: the PNG to write.

  Returns:
    ``path``.
  """
  splits = list(points["splits"])
  fig, axes = plt.subplots(1, len(splits), figsize=(5.0 * len(splits), 3.8), squeeze=False)
  for ax, split in zip(axes[0], splits):
    for label, series in points["splits"][split]["series"].items():
      xy = np.asarray(sorted(series), float)
      ax.plot(xy[:, 0], xy[:, 1], marker="o", label=label)
    for ref, name in ((0.0, "generalist"), (1.0, "specialist")):
      ax.axhline(ref, linestyle="--", color=_COLORS["oracle" if ref else "generalist"],
                 label=name)
    for name, ref in points["splits"][split].get("references", {}).items():
      ax.axhline(ref, linestyle=":", color="black", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("corpus nets the generator learns from")
    ax.set_ylabel("room closed")
    ax.set_title(f"{split} tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return _save(fig, path)

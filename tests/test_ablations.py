"""Ablations: variants get their overrides and one budget, and the table has a row each."""
import os
import shutil

import numpy as np
import pytest

from configs import ablations as ablation_configs
from configs import dit as dit_configs
from launch import ablate as ablations
from t2w_jax.evaluate import run as eval_run


def test_variant_configs():
  config = ablation_configs.get_config()
  full = ablations.variant_config(config, "full")
  concat = ablations.variant_config(config, "token_concat")
  assert full.num_steps == concat.num_steps == config.num_steps
  assert full.model.cross_attention and full.model.prior_bias and not full.model.text_as_token
  assert concat.model.text_as_token and not concat.model.cross_attention
  assert not concat.model.cond_adaln
  assert full.adv_weight == 0.0
  assert ablations.variant_config(config, "with_adv").adv_weight > 0.0
  assert ablations.variant_config(config, "with_perm_aug").permute_aug
  assert ablations.variant_config(config, "diffusion_only").task_loss_weight == 0.0
  assert ablations.variant_config(config, "task_loss_only").diffusion_weight == 0.0
  assert ablations.variant_config(config, "no_fresh_tasks").fresh_tasks == 0
  assert ablations.variant_config(config, "corpus_252").seen_limit == 252
  wide = ablations.variant_config(config, "dit_128x4").model
  assert (wide.width, wide.depth) == (128, 4)
  # The data axis is configs/dit.py's unless the ablation config names a device count.
  assert full.mesh.data == dit_configs.get_config(config.dit_variant).mesh.data
  config.data_devices = 2
  assert ablations.variant_config(config, "token_concat").mesh.data == 2
  with pytest.raises(ValueError, match="unknown ablation variant"):
    ablations.variant_config(config, "no_such_thing")


def test_seeds_average_each_task_before_pairing(tmp_path):
  """With two seeds, a variant's row is each task's accuracy averaged over its seeds, and
  the paired column is the mean over tasks of (variant - first variant) of those."""
  config = ablation_configs.get_config()
  config.seeds = "0,1"
  assert ablations.parse_seeds(config) == [0, 1]
  assert ablations.variant_config(config, "full", 1).seed == 1
  assert ablations.variant_config(config, "full").seed == 0
  assert ablations.variant_dir("/o", "full", 0) == "/o/full"
  assert ablations.variant_dir("/o", "full", 1) == "/o/full_seed1"
  ref = {"generalist": {"mean": 0.5, "per_task": [0.5, 0.5, 0.5]},
         "oracle": {"mean": 0.9, "per_task": [0.9, 0.9, 0.9]}}

  def split(per_task):
    return {"unseen": dict(ref, per_task=per_task, mean=float(np.mean(per_task)),
                           std=float(np.std(per_task))),
            "heldout": dict(ref, per_task=per_task, mean=float(np.mean(per_task)),
                            std=float(np.std(per_task)))}

  full = ablations.average_seeds({0: split([0.8, 0.9, 0.7]), 1: split([0.6, 0.9, 0.9])})
  other = ablations.average_seeds({0: split([0.7, 0.9, 0.7]), 1: split([0.7, 0.8, 0.8])})
  np.testing.assert_allclose(full["unseen"]["per_task"], [0.7, 0.9, 0.8])
  np.testing.assert_allclose(other["unseen"]["per_task"], [0.7, 0.85, 0.75])
  assert full["unseen"]["per_seed"] == pytest.approx({"0": 0.8, "1": 0.8})
  assert full["unseen"]["generalist"]["mean"] == 0.5
  table = ablations.render({"full": full, "other": other}, config)
  d = 100 * (np.asarray([0.7, 0.85, 0.75]) - np.asarray([0.7, 0.9, 0.8]))
  assert f"{d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(3):.1f}" in table
  assert "averaged over training seeds 0, 1" in table
  one = {0: split([0.8, 0.9, 0.7])}
  assert ablations.average_seeds(one) is one[0]
  for bad in ("", "0,0", "a", "-1"):
    config.seeds = bad
    with pytest.raises(ValueError, match="seeds"):
      ablations.parse_seeds(config)


@pytest.mark.slow
def test_run_ablations_tiny(tiny_corpus_dir, tmp_path):
  # The conftest's tiny corpus (configs/corpus.py:tiny over 2 devices), copied: the
  # variants train beside it.
  shutil.copytree(tiny_corpus_dir, tmp_path / "corpus")
  config = ablation_configs.get_config("tiny")
  config.variants = "full,token_concat"
  # Each variant on one device: the orchestration does not depend on the mesh, and one
  # device compiles fastest.
  config.data_devices = 1
  out = ablations.run_ablations(config, str(tmp_path))
  assert set(out["variants"]) == {"full", "token_concat"}
  for name in ("full", "token_concat"):
    for split in ("unseen", "heldout"):
      got = out["variants"][name][split]
      # The table shows the variant's own numbers...
      assert f"{100 * got['mean']:.1f} ± {100 * got['std']:.1f}" in out["table"]
      # ...which are the mean over tasks of that variant's per-task accuracies.
      np.testing.assert_allclose(got["mean"], np.mean(got["per_task"]), rtol=1e-12)
  # Re-evaluating a variant's trained generator on its own gives the same figures, so
  # the orchestration measured the right generator on the right tasks.
  again = eval_run.evaluate(ablations.eval_config(config, str(tmp_path / "corpus")),
                            str(tmp_path / "ablations" / "token_concat"))
  for split in ("unseen", "heldout"):
    assert again["evals"]["generated"]["splits"][split]["per_task"] == (
        out["variants"]["token_concat"][split]["per_task"])
  assert os.path.exists(os.path.join(tmp_path, "ablations", "table.md"))
  # The paired column: token_concat minus full, task by task.
  for split in ("unseen", "heldout"):
    d = 100 * (np.asarray(out["variants"]["token_concat"][split]["per_task"])
               - np.asarray(out["variants"]["full"][split]["per_task"]))
    if len(d) > 1:
      want = f"{d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f}"
      assert want in out["table"]


def test_scaling_points_and_plot(tmp_path):
  from launch import plot_scaling
  def per(m, g=0.8, o=0.9):
    return {"mean": m, "generalist": {"mean": g}, "oracle": {"mean": o}}

  # Each variant's room is measured against its own references (a corpus built with more
  # seen nets draws other unseen tasks).
  results = {"config": {"splits": ["unseen"]},
             "variants": {"full": {"unseen": per(0.85)}, "corpus_100": {"unseen": per(0.82)},
                          "corpus_1000": {"unseen": per(0.85, 0.7, 0.9)},
                          "dit_128x4": {"unseen": per(0.86)},
                          "dit_128x4_chain_corpus_100": {"unseen": per(0.83)}}}
  points = plot_scaling.points_from(results, 504, "small")
  p = points["splits"]["unseen"]
  got = {n: round(r, 9) for n, r in p["series"]["small"]}
  assert got == {100: 0.2, 504: 0.5, 1000: 0.75}
  assert sorted([n, round(r, 9)] for n, r in p["series"]["DiT 128x4"]) == [[100, 0.3],
                                                                          [504, 0.6]]
  assert "references" not in p
  # The hypernetwork's room on the same tasks, against the full variant's references.
  results["hypernet"] = {"splits": {"unseen": {"methods": {"hypernet": {"mean": 0.88}}}}}
  points = plot_scaling.points_from(results, 504, "small")
  refs = points["splits"]["unseen"]["references"]
  assert list(refs) == ["plain hypernetwork (no corpus)"]
  assert refs["plain hypernetwork (no corpus)"] == pytest.approx(0.8)
  path = str(tmp_path / "scaling.png")
  from t2w_jax.evaluate import plots
  plots.plot_scaling(points, path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

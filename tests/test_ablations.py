"""Ablations: variants get their overrides and one budget, and the table has a row each."""
import os

import numpy as np
import pytest

from configs import ablations as ablation_configs
from configs import corpus as corpus_config
from launch import ablate as ablations
from t2w_jax.evaluate import run as eval_run
from t2w_jax.zoo import make_corpus as make_corpus_lib


def test_variant_configs():
  config = ablation_configs.get_config()
  full = ablations.variant_config(config, "full")
  concat = ablations.variant_config(config, "token_concat")
  assert full.num_steps == concat.num_steps == config.num_steps
  assert full.model.cross_attention and full.model.prior_bias and not full.model.text_as_token
  assert concat.model.text_as_token and not concat.model.cross_attention
  assert not concat.model.cond_adaln
  assert ablations.variant_config(config, "no_adv").adv_weight == 0.0
  assert ablations.variant_config(config, "with_perm_aug").permute_aug
  with pytest.raises(ValueError, match="unknown ablation variant"):
    ablations.variant_config(config, "no_such_thing")


def test_run_ablations_tiny(tmp_path):
  c = corpus_config.get_config("tiny")
  c.num_devices = 2
  make_corpus_lib.make_corpus(c, str(tmp_path))
  config = ablation_configs.get_config("tiny")
  config.variants = "full,token_concat"
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

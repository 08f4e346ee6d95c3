"""Ablations: variants get their overrides and one budget, and the table has a row each."""
import os

import pytest

from configs import ablations as ablation_configs
from configs import corpus as corpus_config
from t2w_jax.evaluate import ablations
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
    assert f"| {name} |" in out["table"]
    for split in ("unseen", "heldout"):
      assert 0.0 <= out["variants"][name][split]["mean"] <= 1.0
  assert os.path.exists(os.path.join(tmp_path, "ablations", "table.md"))

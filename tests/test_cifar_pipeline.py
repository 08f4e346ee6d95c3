"""The full path on a tiny CIFAR-100 config under tfds mock data: corpus -> train -> eval.

No download can happen: tfds.testing.mock_data serves random images with the metadata
written here, and the CLIP text encoder the real-data configs ask for is not available
offline, so the corpus falls back to MiniLM (which the corpus then records by name).
"""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar100 as cifar_config
from configs import dit as dit_config
from configs import real_data
from t2w_jax import text as text_lib
from t2w_jax.train import loop
from t2w_jax.zoo import make_corpus as make_corpus_lib
from test_data_real import _write_cifar100_metadata  # pylint: disable=g-bad-import-order


@pytest.mark.slow
def test_cifar100_corpus_train_evaluate(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  fine = [f"thing_{i}" for i in range(97)] + ["aquarium_fish", "maple_tree", "sweet_pepper"]
  _write_cifar100_metadata(tmp_path / "meta", fine)
  workdir = str(tmp_path / "run")
  corpus_cfg = cifar_config.get_config("tiny")
  corpus_cfg.text_encoder = real_data.CLIP  # what the gpu/pod variants use
  corpus_cfg.num_devices = 2
  with tfds.testing.mock_data(num_examples=1000, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path / "meta")):
    summary = make_corpus_lib.make_corpus(corpus_cfg, workdir)
    assert summary["nets"] == 16
    assert any("falling back" in r.getMessage() for r in caplog.records)
    corpus = loop.open_training_corpus(dit_config.get_config("tiny"), workdir)
    assert corpus.meta["encoder"] == text_lib.get_encoder("minilm").name
    assert corpus.class_names[-3:] == ("aquarium fish", "maple tree", "sweet pepper")
    dit_cfg = dit_config.get_config("tiny")
    dit_cfg.mesh.data = 2
    # The evaluation needs a checkpoint of a generator for this corpus, not a good one.
    dit_cfg.num_steps = dit_cfg.checkpoint_every
    metrics = loop.train(dit_cfg, workdir)
    assert metrics["step"] == dit_cfg.num_steps and np.isfinite(metrics["loss"])
    from t2w_jax.evaluate import run as eval_run  # pylint: disable=g-import-not-at-top
    from configs import eval as eval_config  # pylint: disable=g-import-not-at-top
    eval_cfg = eval_config.get_config("tiny")
    # The evaluators that read the data set's images and classes for the table's rows: the
    # baselines (generalist, specialist, ...), the generated nets and the plain
    # hypernetwork. The others work on nets and tasks alone and run on the procedural
    # data set in tests/test_evaluate*.py.
    table_rows = ("baselines", "generated", "hypernet")
    eval_cfg.evals = ml_collections.ConfigDict(
        {k: v for k, v in eval_cfg.evals.items() if k in table_rows})
    results = eval_run.evaluate(eval_cfg, workdir)
  assert set(results["evals"]) == set(table_rows)
  for row in ("specialist", "generalist", "generated", "hypernetwork"):
    assert row in results["table"], row
  assert os.path.exists(os.path.join(workdir, "eval", "results.json"))

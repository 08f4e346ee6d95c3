"""The PyTorch peers of the corpus benchmark: report arithmetic, the no-torch path, a run.

The run needs a Python with torch (not in CI): set T2W_TORCH_PYTHON to one, or have torch
in this Python; without either it is skipped.
"""
import dataclasses
import importlib.util
import os
import sys

import numpy as np
import pytest

from benchmarks import corpus_bench


def _torch_python():
  if os.environ.get("T2W_TORCH_PYTHON"):
    return os.environ["T2W_TORCH_PYTHON"]
  return sys.executable if importlib.util.find_spec("torch") else None


def _settings(**kw):
  base = dict(steps=20, batch_size=16, eval_per_class=4, nets_per_chunk=2,
              conv_impl="im2col", nets=4, baseline_nets=2, min_classes=2, max_classes=4,
              widths=(4, 4, 4), data="synthetic", synthetic_classes=8, synthetic_train=24,
              synthetic_test=8, repeats=1, matmul_size=64, eval_every=10, num_devices=2)
  return corpus_bench.Settings(**dict(base, **kw))


def _peer(nets, nets_per_hour, acc):
  return {"nets": nets, "nets_per_hour": nets_per_hour, "net_steps_per_s": 1.0,
          "trained_acc": acc, "base_acc": [0.25] * nets}


def test_compare_peers_on_fixed_numbers():
  trainer = {"nets_per_hour": 9000.0, "trained_acc": [0.9, 0.7, 0.8, 0.6]}
  peers = {"status": "ok", "vmap": _peer(4, 3000.0, [0.8, 0.8, 0.8, 0.6]),
           "loop": _peer(2, 4500.0, [0.9, 0.6])}
  c = corpus_bench.compare_peers(trainer, peers)
  assert c["faster_peer"] == "loop"
  assert c["ratio_nets_per_hour"] == pytest.approx(2.0)
  assert c["accuracy"]["loop"] == pytest.approx(
      {"nets": 2, "ours": 0.8, "torch": 0.75, "start": 0.25})
  assert c["accuracy"]["vmap"]["ours"] == pytest.approx(0.75)
  assert c["accuracy"]["vmap"]["torch"] == pytest.approx(0.75)
  assert corpus_bench.compare_peers(trainer, {"status": "no_torch"}) is None


def test_report_says_when_there_is_no_torch():
  r = {"peers": {"status": "no_torch", "python": "/usr/bin/python3",
                 "reason": "ModuleNotFoundError: No module named 'torch'"}}
  text = "\n".join(corpus_bench.format_peers(r))
  assert "not run, no torch in /usr/bin/python3" in text and "ours only" in text


def test_without_torch_the_driver_reports_no_torch(tmp_path, monkeypatch):
  """A Python whose ``import torch`` fails: the peers come back as "no_torch", no error."""
  fake = tmp_path / "fake"
  fake.mkdir()
  (fake / "torch.py").write_text("raise ImportError('no torch in this Python')\n")
  monkeypatch.setenv("PYTHONPATH", str(fake))
  s = _settings(steps=2, eval_every=0)
  dataset, _ = corpus_bench.load_data(s)
  tasks = corpus_bench.make_tasks(s, dataset.num_classes, 4)
  out = corpus_bench.run_torch_peers(s, dataset, tasks, 4, python=sys.executable, threads=1)
  assert out["status"] == "no_torch" and "no torch in this Python" in out["reason"]


def test_peers_refuse_more_nets_than_the_trainer_trained():
  s = _settings(torch_nets=8)
  dataset, _ = corpus_bench.load_data(s)
  with pytest.raises(ValueError, match="torch_nets .8. and torch_loop_nets .2. must be <= 4"):
    corpus_bench.run_torch_peers(s, dataset, corpus_bench.make_tasks(s, 8, 4), 4,
                                 python=sys.executable, threads=1)


def test_adapter_family_has_no_peers():
  s = _settings(family="adapter")
  out = corpus_bench.run_torch_peers(s, None, None, 4, python=sys.executable, threads=1)
  assert out["status"] == "skipped"


@pytest.mark.skipif(_torch_python() is None,
                    reason="needs a Python with torch (T2W_TORCH_PYTHON, or torch here)")
def test_peers_train_the_same_nets_as_ours():
  """Same start, batches, optimiser and checks: the torch nets end where ours do."""
  s = _settings()
  dataset, _ = corpus_bench.load_data(s)
  trainer = corpus_bench.run_trainer(s, dataset)
  tasks = corpus_bench.make_tasks(s, dataset.num_classes, trainer["nets"])
  shaped = dataclasses.replace(s, conv_impl=trainer["conv_impl"],
                               nets_per_chunk=trainer["nets_per_chunk"])
  peers = corpus_bench.run_torch_peers(shaped, dataset, tasks, trainer["nets"],
                                       python=_torch_python(), threads=1)
  assert peers["status"] == "ok", peers
  assert peers["vmap"]["nets"] == trainer["nets"] and peers["loop"]["nets"] == 2
  for k in ("vmap", "loop"):
    p = peers[k]
    n = p["nets"]
    assert p["steps_run"] == [s.steps] * n  # the patience never stops a net
    np.testing.assert_allclose(p["base_acc"], trainer["base_acc"][:n], atol=1e-6)
    np.testing.assert_allclose(p["trained_acc"], trainer["trained_acc"][:n], atol=0.05)
  np.testing.assert_allclose(peers["vmap"]["trained_acc"][:2], peers["loop"]["trained_acc"],
                             atol=0.05)
  c = corpus_bench.compare_peers(trainer, peers)
  assert c["ratio_nets_per_hour"] > 0

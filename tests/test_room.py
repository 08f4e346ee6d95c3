"""The room sweep's bookkeeping: the paired room, the shared generalist, resuming."""
import json
import os

import numpy as np
import pytest

from configs import corpus as corpus_config
from t2w_jax.zoo import room


def _records(base, trained, steps=(10, 20, 30)):
  return [{"base_acc": b, "trained_acc": t, "steps": s}
          for b, t, s in zip(base, trained, steps)]


def test_room_is_the_paired_difference_in_points():
  r = room.room_of(_records([0.5, 0.6, 0.7], [0.6, 0.6, 0.9]))
  d = np.array([10.0, 0.0, 20.0])
  assert r["n"] == 3 and r["wins"] == 2 and r["losses"] == 0
  assert r["generalist"] == pytest.approx(0.6) and r["specialist"] == pytest.approx(0.7)
  assert r["room"] == pytest.approx(d.mean())
  assert r["room_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
  assert r["specialist_steps"] == pytest.approx(20.0)
  assert room.room_of(_records([0.5], [0.4], (5,)))["room_se"] == 0.0
  with pytest.raises(ValueError, match="no records"):
    room.room_of([])


class _FakeCorpus:
  """What ``run_sweep`` reads of a corpus: its layout's size and its records."""

  class layout:  # noqa: N801  (stands in for a ParamLayout)
    total = 1234

  records = _records([0.5, 0.6], [0.7, 0.7])


def test_sweep_shares_the_generalist_and_resumes(tmp_path, monkeypatch):
  built = []

  def fake_make_corpus(config, workdir):
    dest = os.path.join(workdir, "corpus")
    # What the setting found already there (seeded from an earlier setting).
    built.append((os.path.basename(workdir), sorted(os.listdir(dest))
                  if os.path.isdir(dest) else []))
    os.makedirs(dest, exist_ok=True)
    for name in room._GENERALIST_FILES:
      with open(os.path.join(dest, name), "w") as f:
        f.write(os.path.basename(workdir))
    return {"generalist": {"steps": 100, "steps_run": 150, "seconds": 2.0},
            "specialist_seconds": 4.0, "specialists_trained": 2}

  monkeypatch.setattr(room.make_corpus_lib, "make_corpus", fake_make_corpus)
  monkeypatch.setattr(room.corpus_lib, "open_corpus", lambda d: _FakeCorpus)
  same = corpus_config.get_config("tiny")
  other = corpus_config.get_config("tiny,net=cnn4k")
  settings = [("a", same), ("b", same), ("c", other)]
  rows = room.run_sweep(settings, str(tmp_path))
  # b has a's generalist (same net, data and classes) before it runs; c, another net, has
  # its own.
  assert built == [("a", []), ("b", sorted(room._GENERALIST_FILES)), ("c", [])]
  with open(os.path.join(tmp_path, "b", "corpus", "generalist.json")) as f:
    assert f.read() == "b"  # b's own run wrote over the seed; only the fake reads it
  assert [r["setting"] for r in rows] == ["a", "b", "c"]
  assert rows[0]["params"] == 1234 and rows[0]["room"] == pytest.approx(15.0)
  assert rows[0]["specialist_seconds_per_net"] == pytest.approx(2.0)
  with open(os.path.join(tmp_path, "rows.json")) as f:
    assert json.load(f) == rows
  table = room.format_rows(rows)
  assert table.count("\n") == 4 and "| a | 1,234 | 2 | 55.0 | 70.0 | +15.0 ± 5.0 | 2/2 |" in table
  # Resumed: finished settings are read back, nothing is rebuilt.
  built.clear()
  assert room.run_sweep(settings, str(tmp_path)) == rows and built == []


def test_sweep_settings_hold_unseen_tasks_only_in_one_shard():
  import importlib.util
  from configs import room_sweep
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch",
                      "sweep_room.py")
  spec = importlib.util.spec_from_file_location("sweep_room", path)
  sweep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(sweep)
  config = room_sweep.get_config("tiny")
  settings = sweep.settings_of(config)
  assert [name for name, _ in settings] == ["cnn2k_tasks2-3", "cnn2k_tasks4-6",
                                            "adapter4_tasks2-3", "adapter4_tasks4-6"]
  for name, c in settings:
    assert (c.num_seen, c.num_unseen, c.num_heldout) == (0, 4, 0) and c.shard_size == 4
    assert f"{c.min_classes}-{c.max_classes}" == name.split("_tasks")[1]
  # The two task ranges of one net share its generalist; the two nets do not.
  keys = [room._generalist_key(c) for _, c in settings]
  assert keys[0] == keys[1] != keys[2] == keys[3]

"""The corpus trainer's shape: forced, recorded or calibrated (with a fake timer), cached."""
import json
import logging
import os

import jax
import numpy as np
import pytest

from conftest import tiny_corpus_config
from t2w_jax.data.types import ImageDataset
from t2w_jax.errors import ConfigError
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import make_corpus as make_corpus_lib
from t2w_jax.zoo import masstrain
from t2w_jax.zoo import trainer_shape as ts

AUTO = {"conv_impl": "auto", "nets_per_chunk": 0}
WORKLOAD = ts.Workload(model={"family": "cnn", "widths": [4, 4], "strides": [1, 2],
                              "logit_scale": 10.0},
                       embed_dim=8, example_shape=(8, 8, 3), example_dtype="uint8",
                       train_rows=64, num_classes=6, batch_size=8, learning_rate=3e-3,
                       max_classes=3)
# Fake rates (net-steps/s) by shape: lax with 2 nets per chunk is the fastest.
RATES = {"im2col/1": 100.0, "im2col/2": 150.0, "im2col/4": 120.0, "im2col/8": 90.0,
         "lax/1": 80.0, "lax/2": 200.0, "lax/4": 60.0, "lax/8": 40.0}


class FakeTimer:
  """Stands in for ``time_candidate``: fixed rates, and a record of what it was asked."""

  def __init__(self, rates=None):
    self.rates, self.asked = dict(rates or RATES), []

  def __call__(self, workload, shape, mesh, budget_s):
    self.asked.append(shape.label)
    return {"net_steps_per_s": self.rates[shape.label], "compile_seconds": 0.0}


def no_timing(*args, **kwargs):
  raise AssertionError("nothing should be timed here")


def mesh2():
  return masstrain.nets_mesh(jax.local_devices()[:2])


def calibrate(path, timer, **kwargs):
  return ts.calibrate(WORKLOAD, mesh2(), path=str(path), timer=timer, **kwargs)


def test_forced_values_skip_calibration():
  shape = ts.resolve({"conv_impl": "lax", "nets_per_chunk": 4}, calibrate=no_timing)
  assert shape == ts.TrainerShape("lax", 4)


def test_auto_without_a_calibration_is_an_error():
  with pytest.raises(ConfigError, match="not resolved"):
    ts.resolve(AUTO)
  with pytest.raises(ConfigError, match="conv_impl='fft'"):
    ts.resolve({"conv_impl": "fft", "nets_per_chunk": 1})
  with pytest.raises(ConfigError, match="nets_per_chunk=-1"):
    ts.resolve({"conv_impl": "lax", "nets_per_chunk": -1})


def test_one_auto_value_is_calibrated_alone(tmp_path):
  timer = FakeTimer()
  shape = ts.resolve({"conv_impl": "im2col", "nets_per_chunk": 0},
                     calibrate=lambda **kw: calibrate(tmp_path / "c.json", timer, **kw))
  assert shape == ts.TrainerShape("im2col", 2)
  assert sorted(timer.asked) == ["im2col/1", "im2col/2", "im2col/4", "im2col/8"]


def test_recorded_shape_is_reused_and_a_different_forced_value_refused():
  recorded = {"conv_impl": "im2col", "nets_per_chunk": 1, "steps": 7}
  assert ts.resolve(AUTO, recorded=recorded, calibrate=no_timing) == ts.TrainerShape("im2col", 1)
  assert ts.resolve({"conv_impl": "im2col", "nets_per_chunk": 0}, recorded=recorded,
                    calibrate=no_timing) == ts.TrainerShape("im2col", 1)
  with pytest.raises(ConfigError, match="nets_per_chunk=2, but the corpus was built with 1"):
    ts.resolve({"conv_impl": "auto", "nets_per_chunk": 2}, recorded=recorded)
  with pytest.raises(ConfigError, match="conv_impl='lax', but .* 'im2col'"):
    ts.resolve({"conv_impl": "lax", "nets_per_chunk": 1}, recorded=recorded)


def test_calibration_picks_the_fastest_and_the_cache_avoids_retiming(tmp_path, caplog):
  path = tmp_path / "cache" / "shape.json"
  timer = FakeTimer()
  with caplog.at_level(logging.INFO):
    assert calibrate(path, timer) == ts.TrainerShape("lax", 2)
  assert sorted(timer.asked) == sorted(RATES)  # every candidate on a CPU, once
  assert "chosen: conv_impl='lax', nets_per_chunk=2" in caplog.text
  assert "im2col x   8 nets/chunk" in caplog.text  # the table of candidates
  # Same machine and workload: read back, nothing timed, same choice.
  assert calibrate(path, no_timing) == ts.TrainerShape("lax", 2)
  # A forced conv is chosen among its own cached candidates.
  assert calibrate(path, no_timing, conv_impl="im2col") == ts.TrainerShape("im2col", 2)
  entries = json.loads(path.read_text())["entries"]
  (entry,) = entries.values()
  assert entry["key"]["devices"] == 2 and entry["key"]["workload"]["batch_size"] == 8
  assert {k: v["net_steps_per_s"] for k, v in entry["rates"].items()} == RATES


def test_another_machine_setting_or_workload_is_timed_anew(tmp_path, monkeypatch):
  path = tmp_path / "shape.json"
  calibrate(path, FakeTimer())
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2")
  other = FakeTimer(dict(RATES, **{"im2col/1": 500.0}))
  assert calibrate(path, other) == ts.TrainerShape("im2col", 1)
  assert len(other.asked) == len(RATES)
  monkeypatch.undo()
  bigger = FakeTimer()
  ts.calibrate(ts.Workload(**dict(WORKLOAD.__dict__, batch_size=16)), mesh2(),
               path=str(path), timer=bigger)
  assert len(bigger.asked) == len(RATES)
  assert len(json.loads(path.read_text())["entries"]) == 3


@pytest.mark.parametrize("content", ["{not json", '{"entries": [1, 2]}', '"a string"',
                                     '{"entries": {"x": {"rates": 3}}}'])
def test_a_corrupt_cache_is_ignored_with_a_warning(tmp_path, caplog, content):
  path = tmp_path / "shape.json"
  path.write_text(content)
  timer = FakeTimer()
  with caplog.at_level(logging.WARNING):
    assert calibrate(path, timer) == ts.TrainerShape("lax", 2)
  assert "ignoring the unreadable calibration cache" in caplog.text
  assert len(timer.asked) == len(RATES)
  assert calibrate(path, no_timing) == ts.TrainerShape("lax", 2)  # rewritten whole


def test_shard_padding_counts_against_a_chunk(tmp_path):
  # 2 devices, shards of 4: chunks of 8 make 16-net shards, so 20 nets train as 32.
  rates = {k: 100.0 for k in RATES}
  rates["im2col/8"] = 150.0
  assert calibrate(tmp_path / "a.json", FakeTimer(rates)) == ts.TrainerShape("im2col", 8)
  assert calibrate(tmp_path / "a.json", no_timing, num_nets=20,
                   shard_size=4) == ts.TrainerShape("im2col", 1)
  assert ts.useful_fraction(8, 2, 20, 4) == 20 / 32
  assert ts.nets_per_shard(64, 16) == 64 and ts.nets_per_shard(4, 6) == 6


ADAPTER = ts.Workload(model={"family": "adapter", "trunk_widths": [8, 16],
                             "trunk_strides": [1, 2], "bottleneck": 4, "logit_scale": 10.0},
                      embed_dim=8, example_shape=(16,), example_dtype="float32",
                      train_rows=64, num_classes=6, batch_size=8, learning_rate=3e-3,
                      max_classes=3)


@pytest.mark.parametrize("workload", [WORKLOAD, ADAPTER], ids=["cnn", "adapter"])
def test_time_candidate_runs_the_real_program_on_a_fake_clock(workload):
  ticks = iter(np.arange(0.0, 100.0, 0.5))
  out = ts.time_candidate(workload, ts.TrainerShape("im2col", 2), mesh2(), budget_s=1.0,
                          clock=lambda: float(next(ticks)))
  # Every clock reading is 0.5 s after the last: compile 0.5 s, timed calls 0.5 s each,
  # two of them within the 1 s budget.
  assert out["nets"] == 4 and out["steps"] == ts.NET_STEPS_PER_DEVICE // 2
  assert out["calls"] == 2 and out["compile_seconds"] == 0.5
  assert out["net_steps_per_s"] == 4 * out["steps"] / 0.5


def test_a_family_without_a_conv_calibrates_the_chunk_alone(tmp_path):
  timer = FakeTimer()
  assert ts.calibrate(ADAPTER, mesh2(), path=str(tmp_path / "c.json"),
                      timer=timer) == ts.TrainerShape("lax", 2)
  assert sorted(timer.asked) == ["lax/1", "lax/2", "lax/4", "lax/8"]


def test_the_corpus_run_takes_the_recorded_shape_else_calibrates(tmp_path, monkeypatch):
  """make_corpus's resolution: meta.json's shape when there is one (nothing timed), else a
  calibration; the config it goes on with holds the shape, the caller's is untouched."""
  monkeypatch.setenv(ts.CACHE_ENV, str(tmp_path / "cache"))
  config = tiny_corpus_config()
  config.trainer.update(conv_impl="auto", nets_per_chunk=0)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(12, dtype=np.int32) % 6
  dataset = ImageDataset("d", tuple("abcdef"), images, labels, images, labels)
  path = tmp_path / "corpus"
  path.mkdir()
  monkeypatch.setattr(ts, "time_candidate", FakeTimer())
  shape, resolved = make_corpus_lib._resolve_shape(config, str(path), 8, dataset, mesh2())
  assert shape == ts.TrainerShape("lax", 2)
  assert (resolved.trainer.conv_impl, resolved.trainer.nets_per_chunk) == ("lax", 2)
  assert (config.trainer.conv_impl, config.trainer.nets_per_chunk) == ("auto", 0)
  (path / "meta.json").write_text(json.dumps(
      {"trainer": dict(config.trainer.to_dict(), conv_impl="im2col", nets_per_chunk=4)}))
  monkeypatch.setattr(ts, "time_candidate", no_timing)
  shape, _ = make_corpus_lib._resolve_shape(config, str(path), 8, dataset, mesh2())
  assert shape == ts.TrainerShape("im2col", 4)


@pytest.mark.slow
def test_a_tiny_corpus_builds_with_auto_and_resumes_with_its_recorded_shape(
    tmp_path, monkeypatch):
  monkeypatch.setenv(ts.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setattr(ts, "time_candidate", FakeTimer())
  config = tiny_corpus_config()
  config.trainer.update(conv_impl="auto", nets_per_chunk=0)
  config.num_seen, config.num_unseen, config.num_heldout = 4, 2, 2
  workdir = str(tmp_path / "run")
  make_corpus_lib.make_corpus(config, workdir)
  path = os.path.join(workdir, "corpus")
  corpus = corpus_lib.open_corpus(path)
  for d in (corpus.meta["trainer"], corpus.meta["config"]["trainer"]):
    assert (d["conv_impl"], d["nets_per_chunk"]) == ("lax", 2)
  assert corpus.meta["nets_per_shard"] == 4
  weights = np.array(corpus.weights)
  # Unfinish it: the last shard and the joined files go; the rerun times nothing.
  for name in ("weights.npy", "manifest.jsonl", corpus_lib.CHECKSUMS_FILE,
               "shards/00001.sum.json"):
    os.remove(os.path.join(path, name))
  monkeypatch.setattr(ts, "time_candidate", no_timing)
  forced = tiny_corpus_config()
  forced.num_seen, forced.num_unseen, forced.num_heldout = 4, 2, 2
  forced.trainer.update(conv_impl="im2col", nets_per_chunk=0)
  with pytest.raises(ConfigError, match="conv_impl='im2col', but the corpus at .* 'lax'"):
    make_corpus_lib.make_corpus(forced, workdir)
  make_corpus_lib.make_corpus(config, workdir)
  np.testing.assert_array_equal(corpus_lib.open_corpus(path).weights, weights)

"""Integrity: identity on resume, checksums on read, input validation, one writer.

The conftest's tiny corpus is shared; the damage tests work on copies of it, so each rebuild
trains only the shards it damaged.
"""
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import dit as dit_config
from conftest import child_env, tiny_corpus_config as tiny_config
from t2w_jax import api, cli
from t2w_jax.errors import BusyError, ConfigError, CorruptError, MissingError, UserError
from t2w_jax.train import loop
from t2w_jax.workdir_lock import LOCK_FILE, workdir_lock
from t2w_jax import io as io_lib
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import make_corpus as make_corpus_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tiny_corpus_run):
  workdir = tiny_corpus_run[0]  # the conftest's: read only, damaged on copies
  return workdir, corpus_lib.open_corpus(os.path.join(workdir, "corpus"))


def _copy(built, tmp_path) -> str:
  workdir = str(tmp_path / "copy")
  shutil.copytree(built[0], workdir)
  return workdir


def _truncate(path: str, keep: int) -> None:
  with open(path, "r+b") as f:
    f.truncate(keep)


# 1. Identity: the whole corpus config; plan.json checked.

def test_resume_with_other_plan_settings_is_refused(built, tmp_path):
  _, corpus = built
  workdir = _copy(built, tmp_path)  # make_corpus takes the workdir's lock: not the shared one
  for key, value in (("num_seen", 12), ("max_classes", 5), ("heldout_frac", 0.2)):
    config = tiny_config()
    config[key] = value
    with pytest.raises(ConfigError, match=rf"other settings \(config\.{key}: "):
      make_corpus_lib.make_corpus(config, workdir)
  assert len(corpus_lib.open_corpus(os.path.join(workdir, "corpus"))) == len(corpus) == 16


def test_identity_is_the_whole_config_but_resumable_keys():
  config = tiny_config()
  config.some_new_key = 3  # a key added later joins the identity without code changes
  ident = make_corpus_lib.corpus_identity(config)
  assert ident["some_new_key"] == 3 and ident["trainer"]["steps"] == config.trainer.steps
  for k in make_corpus_lib.RESUMABLE_KEYS:
    assert k not in ident
  assert corpus_lib.diff_settings({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == [
      "a.c: 2 -> 3", "d: '<absent>' -> 0"]


def test_resume_against_another_plan_json_is_refused(built, tmp_path):
  workdir = _copy(built, tmp_path)
  plan_path = os.path.join(workdir, "corpus", "plan.json")
  with open(plan_path) as f:
    plan = json.load(f)
  plan["tasks"] = plan["tasks"][:-1]
  with open(plan_path, "w") as f:
    json.dump(plan, f)
  with pytest.raises(ConfigError, match="plan.json"):
    make_corpus_lib.make_corpus(tiny_config(), workdir)


# 2. Checksums and row counts: damaged shards rebuilt, damaged corpus files named.

def test_damaged_shards_are_named_and_rebuilt(built, tmp_path, caplog):
  """A truncated shard .jsonl and a truncated shard .npy are rebuilt on resume; the result
  equals the undamaged corpus, and the summary counts both attempts' time."""
  _, reference = built
  workdir = _copy(built, tmp_path)
  shards = os.path.join(workdir, "corpus", "shards")
  with open(os.path.join(shards, "00001.jsonl")) as f:
    lines = f.readlines()
  with open(os.path.join(shards, "00001.jsonl"), "w") as f:
    f.writelines(lines[:2])  # 2 of its 4 records
  _truncate(os.path.join(shards, "00002.npy"), 1000)
  with open(os.path.join(workdir, "corpus", "summary.json")) as f:
    first_seconds = json.load(f)["seconds"]
  with caplog.at_level(logging.WARNING):
    summary = make_corpus_lib.make_corpus(tiny_config(), workdir)
  damaged = " ".join(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
  assert "00001.jsonl" in damaged and "00002.npy" in damaged, damaged
  resumed = corpus_lib.open_corpus(os.path.join(workdir, "corpus"))
  np.testing.assert_array_equal(resumed.weights, reference.weights)
  assert resumed.records == reference.records
  assert summary["attempts"] == 2 and summary["seconds"] > first_seconds
  assert "over 2 attempts" in make_corpus_lib.format_summary(summary)


def test_shard_without_checksum_record_is_not_done(built, tmp_path):
  """A shard whose checksum record never landed (killed just before it) is redone."""
  workdir = _copy(built, tmp_path)
  writer_path = os.path.join(workdir, "corpus")
  os.remove(os.path.join(writer_path, "shards", "00003.sum.json"))
  with open(os.path.join(writer_path, "meta.json")) as f:
    writer = corpus_lib.CorpusWriter(writer_path, {k: v for k, v in json.load(f).items()
                                                   if k != "format_version"})
  assert writer.shard_done(0, [0, 1, 2, 3])
  assert not writer.shard_done(0, [4, 5, 6, 7])  # records for other tasks: not this shard
  assert not writer.shard_done(3)
  assert not os.path.exists(os.path.join(writer_path, "shards", "00003.npy"))


@pytest.mark.parametrize("name", ["weights.npy", "manifest.jsonl"])
def test_open_names_a_damaged_corpus_file(built, tmp_path, name):
  workdir = _copy(built, tmp_path)
  path = os.path.join(workdir, "corpus", name)
  _truncate(path, os.path.getsize(path) - 100)
  with pytest.raises(CorruptError, match=rf"{name}.*damaged.*make_corpus"):
    corpus_lib.open_corpus(os.path.join(workdir, "corpus"))


def test_open_refuses_records_out_of_line_with_rows(built, tmp_path):
  """Even with matching checksums (rewritten by hand), records must line up with rows."""
  workdir = _copy(built, tmp_path)
  path = os.path.join(workdir, "corpus")
  with open(os.path.join(path, "manifest.jsonl")) as f:
    lines = f.readlines()
  with open(os.path.join(path, "manifest.jsonl"), "w") as f:
    f.writelines(lines[:3] + lines[4:])
  with open(os.path.join(path, "checksums.json")) as f:
    sums = json.load(f)
  sums["manifest.jsonl"] = corpus_lib.file_digest(os.path.join(path, "manifest.jsonl"))
  with open(os.path.join(path, "checksums.json"), "w") as f:
    json.dump(sums, f)
  with pytest.raises(CorruptError, match="15 records for 16 weight rows"):
    corpus_lib.open_corpus(path)


def test_unfinished_and_legacy_corpora(built, tmp_path, caplog):
  """No checksums.json: unfinished (refused, saying how to resume); a corpus from before
  checksums (no "config" in meta.json either) still opens, with a warning."""
  workdir = _copy(built, tmp_path)
  path = os.path.join(workdir, "corpus")
  os.remove(os.path.join(path, "checksums.json"))
  with pytest.raises(MissingError, match="unfinished.*same --workdir"):
    corpus_lib.open_corpus(path)
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  del meta["config"]
  with open(os.path.join(path, "meta.json"), "w") as f:
    json.dump(meta, f)
  with caplog.at_level(logging.WARNING):
    assert len(corpus_lib.open_corpus(path)) == 16
  assert any("predates checksums" in r.getMessage() for r in caplog.records)


# 4. The whole config is validated before anything is written.

@pytest.mark.parametrize("key,value,match", [
    ("num_seen", -5, "num_seen=-5"),
    ("min_classes", 7, "max_classes=4"),  # min > max
    ("max_classes", 500, "max_classes=500.*seen classes"),
    ("heldout_frac", 1.5, "heldout_frac=1.5"),
    ("shard_size", 0, "shard_size=0"),
    ("num_devices", 99, "num_devices=99"),
    ("trainer.learning_rate", float("nan"), "trainer.learning_rate=nan"),
    ("trainer.steps", -1, "trainer.steps=-1"),
    ("trainer.conv_impl", "fft", "trainer.conv_impl='fft'.*'auto', 'im2col' or 'lax'"),
    ("trainer.nets_per_chunk", -1, "trainer.nets_per_chunk=-1"),
])
def test_invalid_config_is_refused_before_writing(tmp_path, key, value, match):
  config = tiny_config()
  node, leaf = (config.trainer, key.split(".")[1]) if "." in key else (config, key)
  node[leaf] = value
  workdir = str(tmp_path / "fresh")
  with pytest.raises(ConfigError, match=match):
    make_corpus_lib.make_corpus(config, workdir)
  assert not os.path.exists(workdir)  # no meta.json, shards/ or empty corpus/ behind


# 5. One writer per workdir.

def _hold_lock_in_child(workdir: str) -> subprocess.Popen:
  code = ("import sys, time; from t2w_jax.workdir_lock import workdir_lock\n"
          f"with workdir_lock({workdir!r}, 'make_corpus'):\n"
          "  print('held', flush=True); time.sleep(120)\n")
  proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / "w")
  proc = _hold_lock_in_child(workdir)
  try:
    with pytest.raises(BusyError, match=rf"in use by make_corpus \(pid {proc.pid} "):
      make_corpus_lib.make_corpus(tiny_config(), workdir)
    with pytest.raises(BusyError, match=rf"pid {proc.pid}"):
      with workdir_lock(workdir, "train"):  # what loop.train takes once it has a corpus
        pass
  finally:
    proc.kill()  # kill -9: the holder never releases, its record stays in the lock file
    proc.wait()
  with open(os.path.join(workdir, LOCK_FILE)) as f:
    assert json.load(f)["pid"] == proc.pid
  with caplog.at_level(logging.WARNING):
    with workdir_lock(workdir, "train"):
      pass
  assert any(f"pid {proc.pid}" in r.getMessage() and "taking over" in r.getMessage()
             for r in caplog.records)
  with workdir_lock(workdir, "train"):  # released cleanly: no take-over message now
    pass


# 3. generate() validates every argument.

class _FakeSpec:
  config = {"max_classes": 6, "sampler": "ddim", "sample_steps": 1, "guidance": 1.0}


@pytest.mark.parametrize("kwargs,match", [
    (dict(text=b"red circle"), "text must be a str.*bytes"),
    (dict(text=[1, 2]), r"text\[0\] must be a str"),
    (dict(text=123), "text must be a str.*int"),
    (dict(text=None), "text must be a str.*NoneType"),
    (dict(text=""), "empty description"),
    (dict(text=[f"c{i}" for i in range(7)]), "7 classes.*at most 6"),
    (dict(steps=0), "steps must be"),
    (dict(steps=-3), "steps must be"),
    (dict(steps=2.5), "steps must be"),
    (dict(guidance=float("nan")), "guidance must be a finite"),
    (dict(guidance=float("inf")), "guidance must be a finite"),
    (dict(temperature=float("nan")), "temperature must be a finite"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(num_samples=2.5), "num_samples must be"),
    (dict(num_samples=0), "num_samples must be"),
    (dict(num_samples=True), "num_samples must be"),
    (dict(sampler="euler"), "sampler must be"),
])
def test_generate_refuses_bad_arguments(kwargs, match):
  gen = api.Generator(spec=_FakeSpec(), params=None)  # refused before it is used
  kwargs = dict(dict(text="red circle, blue star"), **kwargs)
  with pytest.raises(ConfigError, match=match):
    api.generate(gen, rng=None, **kwargs)


# 6. Output paths, temp files, logs.

def test_output_path_is_checked_first(tmp_path):
  with pytest.raises(MissingError, match="does not exist"):
    cli.check_output_file(str(tmp_path / "nodir" / "a.npz"))
  with pytest.raises(ConfigError, match="is a directory"):
    cli.check_output_file(str(tmp_path))
  cli.check_output_file(str(tmp_path / "a.npz"))


def test_failed_save_leaves_no_temp_file(tmp_path):
  target = tmp_path / "out.npz"
  target.mkdir()  # os.replace onto a directory fails after the temp file is written
  with pytest.raises(OSError):
    io_lib.atomic_save_npz(str(target), a=np.zeros(3))
  assert os.listdir(tmp_path) == ["out.npz"]


def test_run_default_appends_its_logs():
  with open(os.path.join(ROOT, "scripts", "run_default.sh")) as f:
    script = f.read()
  assert "tee -a" in script and "| tee \"" not in script


# 7. A mesh the model's sharded dimensions do not divide is refused at start-up.

def test_mesh_that_does_not_divide_the_heads_is_refused(built, tmp_path):
  c = dit_config.get_config("tiny")  # 2 heads
  c.corpus_dir = os.path.join(built[0], "corpus")
  c.mesh.data, c.mesh.model = 2, 4
  with pytest.raises(ConfigError, match=r"'heads'.*mesh\.model.*model\.num_heads"):
    loop.train(c, str(tmp_path / "gen"))


# 8. User errors reach the terminal as one line and a non-zero exit.

@pytest.mark.parametrize("script,args,match", [
    ("train.py", ["--config=configs/dit.py:tiny", "--workdir={tmp}/none"], "no corpus at"),
    ("generate.py", ["--workdir={tmp}/none", "--text=a, b", "--out={tmp}/a.npz"],
     "does not exist"),
    ("generate.py", ["--workdir={tmp}", "--text=a, b", "--out={tmp}/no/a.npz"],
     "--out=.*does not exist"),
    ("generate.py", ["--workdir={tmp}", "--text=a classifier for red circle",
                     "--out={tmp}/a.npz"], r"parsed as 1 class \['red circle'\]"),
    ("make_corpus.py", ["--config=configs/corpus.py:tiny", "--workdir={tmp}/c",
                        "--config.num_seen=-5"], "num_seen=-5"),
    ("make_corpus.py", ["--config=configs/corpus.py:bogus", "--workdir={tmp}/c"],
     "unknown corpus config variant 'bogus'"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, script, args, match):
  cmd = [sys.executable, os.path.join(ROOT, "launch", script)]
  cmd += [a.replace("{tmp}", str(tmp_path)) for a in args]
  out = subprocess.run(cmd, env=child_env(), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == cli.USER_ERROR_EXIT, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and re.search(match, errors[0]), out.stderr[-2000:]
  assert not os.path.exists(tmp_path / "none")  # a refused run makes no workdir


def test_user_error_types_are_the_builtins_callers_expect():
  assert issubclass(ConfigError, ValueError) and issubclass(MissingError, FileNotFoundError)
  assert issubclass(CorruptError, UserError) and issubclass(BusyError, UserError)

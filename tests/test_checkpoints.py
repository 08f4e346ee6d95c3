"""Checkpoints: one owner of the format, digests checked at every restore, defaults once.

The conftest's tiny trained generator (steps 10 and 20 on disk) is read; the damage tests
work on copies of its workdir.
"""
import ast
import dataclasses
import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import dit as dit_config
from t2w_jax import api
from t2w_jax import checkpoints as ckpt_lib
from t2w_jax import generator as generator_lib
from t2w_jax.errors import ConfigError, CorruptError
from t2w_jax.train import loop
from t2w_jax.train import state as state_lib

from conftest import full_state
from conftest import tiny_trained_config as tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tiny_trained_dir):
  return tiny_trained_dir  # the conftest's: read only, damaged on copies


def _copy(workdir, tmp_path) -> str:
  out = str(tmp_path / "copy")
  shutil.copytree(workdir, out)
  return out


def _data_files(workdir, step) -> list[str]:
  """The arrays' data files of a step (orbax's OCDBT data files), relative to the step."""
  step_dir = os.path.join(workdir, "checkpoints", str(step))
  files = sorted(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*")))
  assert files, os.listdir(os.path.join(step_dir, "state"))
  return [os.path.relpath(f, step_dir) for f in files]


def _flip(path: str, at: float = 0.5) -> None:
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    f.seek(0)
    f.write(bytes(data))


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# 1. One owner of the format: inference imports nothing from training.

def _imports(path: str) -> list[str]:
  """Every module a file imports, at any depth (function-local imports included)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = "." * node.level + (node.module or "")
      out += [base] + [f"{base}.{a.name}" for a in node.names]
  return out


@pytest.mark.parametrize("name", ["generator.py", "api.py", "checkpoints.py"])
def test_inference_and_the_format_import_nothing_from_training(name):
  imports = _imports(os.path.join(ROOT, "t2w_jax", name))
  assert imports  # the parse found the imports at all
  bad = [m for m in imports if m.startswith(("t2w_jax.train", ".train", "t2w_jax.train."))
         or m in ("t2w_jax.train",)]
  assert not bad, f"t2w_jax/{name} imports {bad} from training"
  if name == "checkpoints.py":  # neutral: not the generator either
    assert not [m for m in imports if "generator" in m or m.startswith("t2w_jax.api")]


def test_load_and_generate_run_with_training_unimportable(trained):
  """In a process where ``t2w_jax.train`` cannot be imported at all, load and generate
  work: no import of training is hidden in a code path either."""
  code = (
      "import sys, importlib.abc\n"
      "class Block(importlib.abc.MetaPathFinder):\n"
      "  def find_spec(self, name, path, target=None):\n"
      "    if name == 't2w_jax.train' or name.startswith('t2w_jax.train.'):\n"
      "      raise ImportError('blocked: ' + name)\n"
      "sys.meta_path.insert(0, Block())\n"
      "import jax\n"
      "from t2w_jax import api\n"
      f"gen = api.load({trained!r})\n"
      "nets = api.generate(gen, 'red circle, blue star', rng=jax.random.PRNGKey(0))\n"
      "assert not [m for m in sys.modules if m.startswith('t2w_jax.train')]\n"
      "print('ok', gen.step)\n")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and out.stdout.split() == ["ok", "20"], out.stderr[-3000:]


# 2. Digests: written at save, checked at every restore.

def test_every_saved_step_carries_the_digests_of_its_files(trained):
  directory = os.path.join(trained, "checkpoints")
  with open(os.path.join(directory, ckpt_lib.FORMAT_FILE)) as f:
    assert json.load(f) == {"digests_from_step": 10}
  for step in (10, 20):
    with open(os.path.join(directory, str(step), ckpt_lib.DIGESTS_FILE)) as f:
      files = json.load(f)["files"]
    assert set(_data_files(trained, step)) <= set(files)
    on_disk = {os.path.relpath(os.path.join(d, n), os.path.join(directory, str(step)))
               for d, _, names in os.walk(os.path.join(directory, str(step))) for n in names}
    assert set(files) == on_disk - {ckpt_lib.DIGESTS_FILE}
    assert ckpt_lib.step_problem(directory, step) is None


def test_load_refuses_a_damaged_step_naming_it_and_the_intact_one(trained, tmp_path):
  """One byte flipped in each data file of the latest step: ``load`` refuses it in one
  line naming the step and a damaged file, and says to load step 10, which loads."""
  workdir = _copy(trained, tmp_path)
  flipped = _data_files(workdir, 20)
  for rel in flipped:
    _flip(os.path.join(workdir, "checkpoints", "20", rel))
  with pytest.raises(CorruptError) as e:
    api.load(workdir)
  msg = str(e.value)
  assert "\n" not in msg
  assert "checkpoint step 20 in " in msg and "is damaged: " in msg, msg
  assert any(f"{rel} does not match its digest" in msg for rel in flipped), msg
  assert msg.endswith("the newest intact step is 10: load it with step=10"), msg
  with pytest.raises(CorruptError, match="step 20 .*is damaged"):
    api.load(workdir, step=20)
  _assert_same(api.load(workdir, step=10).params, api.load(trained, step=10).params)


def test_load_names_the_one_damaged_file(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  rel = max(_data_files(workdir, 20),
            key=lambda r: os.path.getsize(os.path.join(workdir, "checkpoints", "20", r)))
  _flip(os.path.join(workdir, "checkpoints", "20", rel), at=0.9)
  with pytest.raises(CorruptError, match=rf"step 20 .*: {rel} does not match its digest"):
    api.load(workdir)


def test_no_older_intact_step_is_said(trained, tiny_corpus_dir, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in (10, 20):
    for rel in _data_files(workdir, step):
      _flip(os.path.join(workdir, "checkpoints", str(step), rel))
  with pytest.raises(CorruptError, match="step 20 .*no older step is intact"):
    api.load(workdir)
  with pytest.raises(CorruptError, match=r"every checkpoint in .* is damaged \(step 20"):
    loop.train(tiny(tiny_corpus_dir), workdir)


def test_a_save_cut_short_before_its_digests_is_damaged_and_older_steps_are_legacy(
    trained, tmp_path, caplog):
  """After format.json, a step without digests.json is an interrupted save (refused);
  without format.json (checkpoints written before digests) it loads, with a warning."""
  workdir = _copy(trained, tmp_path)
  directory = os.path.join(workdir, "checkpoints")
  os.remove(os.path.join(directory, "20", ckpt_lib.DIGESTS_FILE))
  with pytest.raises(CorruptError, match="step 20 .*digests.json is missing"):
    api.load(workdir)
  os.remove(os.path.join(directory, ckpt_lib.FORMAT_FILE))
  with caplog.at_level(logging.WARNING):
    gen = api.load(workdir)
  assert gen.step == 20
  assert any("predates checkpoint digests" in r.getMessage() for r in caplog.records)


def test_resume_falls_back_to_the_newest_intact_step(trained, tiny_corpus_dir, tmp_path,
                                                     caplog):
  """A damaged latest step: the resume logs it, restores step 10, trains 10 -> 20 again
  and ends with the state of the uninterrupted run, bit for bit."""
  workdir = _copy(trained, tmp_path)
  rel = _data_files(workdir, 20)[0]
  _flip(os.path.join(workdir, "checkpoints", "20", rel))
  with pytest.raises(CorruptError, match="step 20 .*is damaged"):
    full_state(workdir, step=20)  # a step asked for by number is refused
  with caplog.at_level(logging.WARNING):
    loop.train(tiny(tiny_corpus_dir), workdir)
  logs = " ".join(r.getMessage() for r in caplog.records)
  assert f"checkpoint step 20 in {os.path.join(workdir, 'checkpoints')} is damaged" in logs
  assert "resuming from step 10, the newest intact step" in logs, logs
  assert ckpt_lib.step_problem(os.path.join(workdir, "checkpoints"), 20) is None
  _assert_same(full_state(workdir), full_state(trained))


def test_load_refuses_non_finite_parameters(trained, tmp_path):
  """A step whose files are intact but whose EMA parameters hold a NaN (a diverged run)."""
  workdir = _copy(trained, tmp_path)
  state = full_state(workdir)
  leaves, treedef = jax.tree.flatten(state.ema_params)
  leaves[0] = np.asarray(leaves[0]).copy()
  leaves[0].flat[0] = np.nan
  bad = state.replace(ema_params=jax.tree.unflatten(treedef, leaves))
  spec = generator_lib.GeneratorSpec.load(workdir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), spec.identity(),
                               save_every=0, keep=3)
  assert ckpt.save(30, bad, force=True)
  ckpt.close()
  with pytest.raises(CorruptError, match=r"step 30 .*non-finite EMA parameters \(1 NaN"):
    api.load(workdir)
  assert api.load(workdir, step=20).step == 20


# 4. Every default lives once: the generator's code reads the dit config's keys directly.

GENERATOR_CODE = ["t2w_jax/generator.py", "t2w_jax/checkpoints.py"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "t2w_jax", "train", "*.py")))


def _defaulted_gets(path: str) -> list[tuple[str, object, int]]:
  """(key, default, line) of every ``x.get("key", default)`` in a file."""
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())
  out = []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get" and len(node.args) == 2
        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      try:
        default = ast.literal_eval(node.args[1])
      except ValueError:
        default = ast.unparse(node.args[1])
      out.append((node.args[0].value, default, node.lineno))
  return out


def test_no_second_default_for_a_dit_config_key():
  """configs/dit.py holds every default of the generator's config: the code that trains,
  saves and samples the generator never falls back to a value of its own for one of its
  keys (a fallback that disagreed with the config, like a `fresh_chain` of False against
  the config's True, would silently change a run that lacks the key)."""
  keys = set(dit_config.get_config().keys())
  found = [(path, k, d, line) for path in GENERATOR_CODE for k, d, line in _defaulted_gets(path)
           if k in keys]
  assert not found, found


def test_the_generator_follows_the_config(tiny_corpus_dir):
  """What configs/dit.py says is what the code does: the element-centred normalisation
  and the fresh-task chain; a config without the keys is an error, not another default."""
  config = tiny(tiny_corpus_dir)
  assert config.norm_center == "element" and config.fresh_chain is True
  corpus = loop.open_training_corpus(config, "")
  spec = generator_lib.spec_from_corpus(config, corpus)
  assert spec.norms.center is not None and spec.identity()["norm_center"] == "element"
  from t2w_jax.train.step import make_train_step
  for key in ("fresh_chain", "norm_center"):
    partial = ml_collections.ConfigDict({k: v for k, v in config.items() if k != key})
    with pytest.raises(AttributeError, match=key):
      if key == "fresh_chain":
        step = make_train_step(spec, partial)
        jax.eval_shape(step, jax.eval_shape(
            lambda r: state_lib.unbox(state_lib.init_state(spec, partial, r)),
            jax.random.PRNGKey(0)), loop.CorpusBatches(corpus, config.max_classes, 2, 0)(0),
            loop.put_task_images(config, corpus, loop.mesh_lib.make_mesh(1, 1)))
      else:
        generator_lib.spec_from_corpus(partial, corpus)


def test_an_older_generator_json_gets_the_values_its_run_used(trained):
  """The one fallback: keys a generator.json predates take the value its run used; keys
  it has are kept."""
  with open(os.path.join(trained, generator_lib.SPEC_FILE)) as f:
    d = json.load(f)
  assert set(generator_lib.PRE_KEY_VALUES) <= set(d["config"])
  old = dict(d, config={k: v for k, v in d["config"].items()
                        if k not in generator_lib.PRE_KEY_VALUES})
  spec = generator_lib.GeneratorSpec.from_json(old)
  assert {k: spec.config[k] for k in generator_lib.PRE_KEY_VALUES} == {
      "norm_center": "layer", "parameterization": "x0", "sample_temperature": 1.0}
  kept = generator_lib.GeneratorSpec.from_json(d)
  assert kept.config["norm_center"] == "element"


def test_a_checkpoint_listing_the_text_head_at_its_old_values_loads(trained, tmp_path):
  """Runs made while the identity still listed the text head's keys stored them at the
  values runs before the head had (no head); such a checkpoint loads into a spec with those
  values, and one stored with a text head is still refused."""
  workdir = _copy(trained, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "20")
  path = os.path.join(step_dir, "meta", "metadata")

  def store(model_keys):
    with open(path) as f:
      meta = json.load(f)
    meta["model"] = {**meta["model"], **model_keys}
    with open(path, "w") as f:
      json.dump(meta, f)
    ckpt_lib.write_digests(step_dir)  # an intact step, not a damaged one

  store(generator_lib.PRE_KEY_MODEL_VALUES)
  _assert_same(api.load(workdir).params, api.load(trained).params)
  assert generator_lib.canonical_identity({"model": {"width": 8, "text_head": 0,
                                                     "text_head_depth": 2}, "k": 1}) == {
      "model": {"width": 8}, "k": 1}
  store({"text_head": 16})
  with pytest.raises(ConfigError, match="text_head"):
    api.load(workdir)


def test_a_generator_with_kernels_stored_in_out_loads_and_is_not_resumed(
    trained, tiny_corpus_dir, tmp_path):
  """A generator written when projection kernels were stored (*in, *out) (no
  "kernel_layout" in its generator.json or its checkpoint's identity) loads to the same
  parameters as the generator it was written from; resuming its training is refused,
  naming the layout."""
  from t2w_jax.models import layers
  spec = generator_lib.GeneratorSpec.load(trained)
  state = full_state(trained)
  older = str(tmp_path / "older")
  os.makedirs(older)
  old_spec = dataclasses.replace(spec, kernel_layout="in_out")
  d = old_spec.to_json()
  del d["kernel_layout"]
  with open(os.path.join(older, generator_lib.SPEC_FILE), "w") as f:
    json.dump(d, f)
  moved = layers.move_projection_kernels(state.ema_params, "out_in", "in_out")
  changed = [a.shape != b.shape for a, b in zip(jax.tree.leaves(moved),
                                                jax.tree.leaves(state.ema_params))]
  assert any(changed) and not all(changed)
  assert "kernel_layout" not in old_spec.identity()
  ckpt = ckpt_lib.Checkpointer(os.path.join(older, "checkpoints"), old_spec.identity(),
                               save_every=1)
  ckpt.save(20, state.replace(ema_params=moved), force=True)
  ckpt.close()

  _assert_same(api.load(older).params, api.load(trained).params)
  config = tiny(tiny_corpus_dir)
  with pytest.raises(ConfigError, match="kernel_layout"):
    loop.load_or_make_spec(config, older, loop.open_training_corpus(config, older))

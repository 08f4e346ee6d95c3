"""``api.fuse`` and ``launch/fuse.py``: one net for "A and B", its errors, and the command line.

A tiny generator with random parameters, saved as a training run would save it
(generator.json and a checkpoint), stands in for a trained one: fusing needs a generator's
spec and parameters, not good ones.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import dit as dit_config
from t2w_jax import api
from t2w_jax import generator as generator_lib
from t2w_jax.errors import ConfigError
from t2w_jax import checkpoints as ckpt_lib
from t2w_jax.train import state as state_lib
from t2w_jax.zoo import corpus as corpus_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_A, TEXT_B = "red circle and blue star", "blue star, green heart"
UNION = ["red circle", "blue star", "green heart"]


@pytest.fixture(scope="module")
def workdir(tiny_corpus_dir, tmp_path_factory):
  """A generator workdir: the tiny DiT (perturbed init), written as ``loop.train`` would."""
  d = str(tmp_path_factory.mktemp("fuse_run"))
  config = dit_config.get_config("tiny")
  config.corpus_dir = tiny_corpus_dir
  spec = generator_lib.spec_from_corpus(config, corpus_lib.open_corpus(tiny_corpus_dir))
  spec.save(d)
  state = jax.jit(lambda r: state_lib.unbox(state_lib.init_state(spec, config, r)))(
      jax.random.PRNGKey(0))
  # At init the DiT's zeroed output layers (adaLN-Zero) give the same net for every text;
  # perturbed, the net depends on the class list, so the tests can tell lists apart.
  leaves, tree = jax.tree.flatten(state.ema_params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  state = state.replace(ema_params=jax.tree.unflatten(tree, [
      x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
  ckpt = ckpt_lib.Checkpointer(os.path.join(d, generator_lib.CHECKPOINT_DIR),
                               spec.identity(), save_every=1)
  ckpt.save(0, state, force=True)
  ckpt.close()
  return d


@pytest.fixture(scope="module")
def gen(workdir):
  return api.load(workdir)


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fuse_is_generate_on_the_union(gen):
  assert api.union_classes(TEXT_A, TEXT_B) == UNION
  assert api.union_classes(["green heart"], TEXT_A) == ["green heart"] + UNION[:2]
  rng = jax.random.PRNGKey(3)
  fused = api.fuse(gen, TEXT_A, TEXT_B, rng=rng, num_samples=2, steps=2)
  _assert_same(fused, api.generate(gen, "red circle, blue star and green heart", rng=rng,
                                   num_samples=2, steps=2))
  assert jax.tree.leaves(fused)[0].shape[0] == 2
  one = api.fuse(gen, TEXT_A, TEXT_B, rng=rng, num_samples=2, steps=2, average=True)
  _assert_same(one, api.generate(gen, UNION, rng=rng, num_samples=2, steps=2, average=True))
  assert api.union_classes(TEXT_B, TEXT_A) == ["blue star", "green heart", "red circle"]
  # The union's net is not task A's (the comparison above can tell class lists apart).
  alone = api.generate(gen, TEXT_A, rng=rng, num_samples=2, steps=2)
  assert max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(alone), jax.tree.leaves(fused))) > 1e-4


def test_fuse_errors(gen):
  rng = jax.random.PRNGKey(0)
  cases = [
      (("", TEXT_B), "text_a: empty description"),
      ((TEXT_A, " , and "), "text_b: description"),
      ((["red circle", 3], TEXT_B), r"text_a\[1\] must be a str"),
      ((TEXT_A, "blue star"), r"text_b \(blue star\) adds no class to text_a"),
      (("blue star", TEXT_A), r"text_a \(blue star\) adds no class to text_b"),
      ((TEXT_A, TEXT_A), "adds no class"),
  ]
  for (a, b), match in cases:
    with pytest.raises(ConfigError, match=match):
      api.fuse(gen, a, b, rng=rng)
  kmax = gen.config["max_classes"]
  many = [f"class {i}" for i in range(kmax)]
  with pytest.raises(ConfigError, match=f"together name {kmax + 1} different classes; this "
                     f"generator makes nets of at most {kmax} classes"):
    api.fuse(gen, many[:2], many[2:] + ["one more"], rng=rng)
  with pytest.raises(ConfigError, match="steps"):  # a sampling argument, as generate
    api.fuse(gen, TEXT_A, TEXT_B, rng=rng, steps=0)


def _run_fuse(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  env.pop("XLA_FLAGS", None)  # the command sets up its own host devices
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "fuse.py"), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fuse_command_line(workdir, gen, tmp_path, slowness):
  out = str(tmp_path / "fused.npz")
  proc = _run_fuse(f"--workdir={workdir}", f"--text_a={TEXT_A}", f"--text_b={TEXT_B}",
                   f"--out={out}", "--steps=2", "--seed=3", timeout=600 * slowness)
  assert proc.returncode == 0, proc.stderr[-3000:]
  params, _, names, emb = api.load_net(out)
  assert names == UNION and emb.shape[0] == len(UNION)
  again = api.take(api.fuse(gen, TEXT_A, TEXT_B, rng=jax.random.PRNGKey(3), steps=2), 0)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  # A user error is one line and exit status 2, before the generator is loaded.
  proc = _run_fuse(f"--workdir={tmp_path / 'nowhere'}", f"--text_a={TEXT_A}",
                   "--text_b=blue star", f"--out={tmp_path / 'x.npz'}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: text_b (blue star) adds no")
  assert not os.path.exists(tmp_path / "x.npz")

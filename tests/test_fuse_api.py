"""``api.fuse`` and ``launch/fuse.py``: one net for "A and B", its errors, and the command line.

A tiny generator with random parameters, saved as a training run would save it
(``tiny_generator_dir`` in conftest.py), stands in for a trained one: fusing needs a
generator's spec and parameters, not good ones.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import launch_env
from t2w_jax import api
from t2w_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_A, TEXT_B = "red circle and blue star", "blue star, green heart"
UNION = ["red circle", "blue star", "green heart"]


@pytest.fixture(scope="module")
def workdir(tiny_generator_dir):
  return tiny_generator_dir


@pytest.fixture(scope="module")
def gen(workdir):
  return api.load(workdir)


def _assert_same(a, b):
  a, b = getattr(a, "params", a), getattr(b, "params", b)  # a Net or NetBatch: its params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fuse_is_generate_on_the_union(gen):
  assert api.union_classes(TEXT_A, TEXT_B) == UNION
  assert api.union_classes(["green heart"], TEXT_A) == ["green heart"] + UNION[:2]
  rng = jax.random.PRNGKey(3)
  fused = api.fuse(gen, TEXT_A, TEXT_B, rng=rng, num_samples=2, steps=2)
  _assert_same(fused, api.generate(gen, "red circle, blue star and green heart", rng=rng,
                                   num_samples=2, steps=2))
  assert isinstance(fused, api.NetBatch) and len(fused) == 2
  assert fused.class_names == tuple(UNION)
  one = api.fuse(gen, TEXT_A, TEXT_B, rng=rng, num_samples=2, steps=2, average=True)
  _assert_same(one, api.generate(gen, UNION, rng=rng, num_samples=2, steps=2, average=True))
  assert api.union_classes(TEXT_B, TEXT_A) == ["blue star", "green heart", "red circle"]
  # The union's net is not task A's (the comparison above can tell class lists apart).
  alone = api.generate(gen, TEXT_A, rng=rng, num_samples=2, steps=2)
  assert max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(alone.params),
                             jax.tree.leaves(fused.params))) > 1e-4


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
  env = launch_env()
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "fuse.py"), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fuse_command_line(workdir, gen, tmp_path, slowness):
  out = str(tmp_path / "fused.npz")
  proc = _run_fuse(f"--workdir={workdir}", f"--text_a={TEXT_A}", f"--text_b={TEXT_B}",
                   f"--out={out}", "--steps=2", "--seed=3", timeout=600 * slowness)
  assert proc.returncode == 0, proc.stderr[-3000:]
  net = api.load_net(out)
  params, names, emb = net.params, list(net.class_names), net.class_emb
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

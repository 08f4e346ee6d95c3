"""The four command lines, each run once as a user would (a subprocess), on the tiny
configs cut down further to seconds: corpus -> generator -> evaluation -> one generated net.

They share one workdir, in order; each checks what its command must leave behind.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import launch_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Seconds one command may take on the reference machine; scaled by the conftest's slowness.
TIMEOUT = 900
_TIMEOUT = [float(TIMEOUT)]


@pytest.fixture(scope="module", autouse=True)
def _scaled_timeout(slowness):
  _TIMEOUT[0] = TIMEOUT * slowness


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  env = launch_env()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=_TIMEOUT[0])
  assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cli_run"))


@pytest.mark.slow
def test_make_corpus(workdir):
  _run("make_corpus.py", "--config=configs/corpus.py:tiny", f"--workdir={workdir}",
       "--config.num_devices=2", "--config.base.max_steps=50", "--config.trainer.steps=10")
  with open(os.path.join(workdir, "corpus", "meta.json")) as f:
    assert json.load(f)["encoder"].startswith("minilm")
  assert os.path.exists(os.path.join(workdir, "corpus", "weights.npy"))


@pytest.mark.slow
def test_train(workdir):
  _run("train.py", "--config=configs/dit.py:tiny", f"--workdir={workdir}",
       "--config.num_steps=4", "--config.checkpoint_every=4", "--config.mesh.data=1")
  assert os.path.exists(os.path.join(workdir, "generator.json"))
  assert "4" in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.slow
def test_evaluate(workdir):
  proc = _run("evaluate.py", f"--config={os.path.join(ROOT, 'tests', 'cli_eval_config.py')}",
              f"--workdir={workdir}", "--config.evals.generated.steps=2")
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    res = json.load(f)
  assert set(res["evals"]) == {"baselines", "generated"}
  assert res["meta"]["generator_step"] == 4
  assert res["evals"]["generated"]["steps"] == 2  # the command-line override reached it
  with open(os.path.join(workdir, "eval", "table.md")) as f:
    assert f.read().strip() in proc.stdout + proc.stderr


@pytest.mark.slow
def test_generate(workdir):
  out = os.path.join(workdir, "net.npz")
  # Read as people write it; the corpus's names give the known spelling.
  proc = _run("generate.py", f"--workdir={workdir}", "--text=tell Red Circles from blue stars",
              f"--out={out}", "--steps=2", "--seed=3")
  assert "classes (2): ['red circle', 'blue star']" in proc.stdout
  from t2w_jax import api
  net = api.load_net(out)
  params, names, emb = net.params, list(net.class_names), net.class_emb
  assert names == ["red circle", "blue star"] and emb.shape[0] == 2
  # The same net as generate() in this process with the same seed and settings.
  import jax
  gen = api.load(workdir)
  again = api.take(api.generate(gen, "red circle and blue star", rng=jax.random.PRNGKey(3),
                                steps=2), 0)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.slow
def test_enhance_and_few_shot(workdir):
  """launch/enhance.py at t = 0 writes the net unchanged and at t > 0 the net api.enhance
  gives; launch/few_shot.py conditions the generator on the shots it is given (or fine-tunes on
  them) and refuses a bad file."""
  import jax
  from t2w_jax import api
  net = os.path.join(workdir, "net.npz")
  if not os.path.exists(net):
    _run("generate.py", f"--workdir={workdir}", "--text=red circle and blue star",
         f"--out={net}", "--seed=3")
  saved = api.load_net(net)
  params, names = saved.params, list(saved.class_names)
  gen = api.load(workdir)
  for t in (0, 7):
    out = os.path.join(workdir, f"enhanced_{t}.npz")
    _run("enhance.py", f"--workdir={workdir}", f"--net={net}", f"--t={t}", f"--out={out}",
         "--seed=1")
    got_net = api.load_net(out)
    got, got_names = got_net.params, list(got_net.class_names)
    want = params if t == 0 else api.enhance(gen, params, names, t=t, rng=jax.random.PRNGKey(1))
    assert got_names == names
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 if t else 0)
  size = gen.spec.image_size
  shots = os.path.join(workdir, "shots.npz")
  rng = np.random.default_rng(0)
  np.savez(shots, images=rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8),
           labels=np.array([0, 0, 0, 1, 1, 1]))
  out = os.path.join(workdir, "few_shot.npz")
  # The smallest step cap few_shot takes (one check at its eval_every): what is checked is
  # the command's net, not its quality.
  _run("few_shot.py", f"--workdir={workdir}", "--text=red circle and blue star",
       f"--shots={shots}", f"--out={out}", "--max_steps=25", "--method=finetune")
  got_net = api.load_net(out)
  got, got_names = got_net.params, list(got_net.class_names)
  assert got_names == ["red circle", "blue star"]
  assert api.ParamLayout.from_params(got) == gen.layout
  # The default method is the generator's shot-conditioned net: what the API call gives.
  from t2w_jax import shots as shots_lib
  _run("few_shot.py", f"--workdir={workdir}", "--text=red circle and blue star",
       f"--shots={shots}", f"--out={out}")
  with np.load(shots) as z:
    want, _ = shots_lib.generate_with_shots(gen, "red circle and blue star", z["images"],
                                            z["labels"], rng=jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves(api.load_net(out).params), jax.tree.leaves(want.params),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  np.savez(shots, images=np.zeros((2, size, size, 3), np.uint8))
  env = launch_env()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "few_shot.py"),
                         f"--workdir={workdir}", "--text=red circle and blue star",
                         f"--shots={shots}", f"--out={out}.bad"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "lacks ['labels']" in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(f"{out}.bad")

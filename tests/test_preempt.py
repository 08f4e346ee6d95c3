"""Preemption: SIGTERM mid-run saves, exits with PREEMPTED_EXIT, and the rerun is exact."""
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import corpus as corpus_config
from t2w_jax import checkpoints as ckpt_lib
from t2w_jax import cli
from t2w_jax import preempt
from t2w_jax.train import loop
from t2w_jax.zoo import corpus as corpus_lib
from t2w_jax.zoo import make_corpus as make_corpus_lib

from conftest import child_env, full_state, tiny_trained_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_only_sets_the_flag_and_the_handlers_come_back(signum):
  before = signal.getsignal(signum)
  with preempt.stop_requests() as stop:
    assert not stop
    stop.check("before any signal")  # nothing to raise
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs between bytecodes of the main thread
    assert stop.signum == signum
    with pytest.raises(preempt.Preempted,
                       match=rf"stopped by {signal.Signals(signum).name} after step 3 "
                             r"\(saved\); rerun the same command to resume"):
      stop.check("after step 3")
  assert signal.getsignal(signum) is before
  assert preempt.PREEMPTED_EXIT not in (0, 1, cli.USER_ERROR_EXIT)


def test_disabled_requests_leave_the_handlers_alone():
  before = signal.getsignal(signal.SIGTERM)
  with preempt.stop_requests(enabled=False) as stop:
    assert signal.getsignal(signal.SIGTERM) is before and not stop


def _run_until(cmd, ready, timeout=600):
  """Starts ``cmd``; once ``ready()`` holds, sends SIGTERM. Returns (returncode, stderr)."""
  with open(os.devnull, "w") as devnull:
    proc = subprocess.Popen(cmd, env=child_env(), cwd=ROOT, stdout=devnull,
                            stderr=subprocess.PIPE, text=True)
  lines = []
  deadline = time.time() + timeout
  try:
    while proc.poll() is None and time.time() < deadline:
      line = proc.stderr.readline()
      lines.append(line)
      if ready(line):
        proc.send_signal(signal.SIGTERM)
        break
    _, rest = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, "".join(lines) + rest


@pytest.mark.slow  # a child process: its start-up, and its compile where the cache lacks it
def test_sigterm_during_training_saves_and_the_rerun_is_exact(tiny_corpus_dir,
                                                              tiny_trained_dir, tmp_path):
  """SIGTERM as the training starts: the step in progress is finished and saved (no
  periodic checkpoint is due before the end), the exit status is PREEMPTED_EXIT, and the
  rerun resumes there and ends with the uninterrupted run's state, bit for bit: the
  conftest's ``tiny_trained_dir``, the same config but for its checkpoint period, which
  leaves the state alone."""
  config = tiny_trained_config(tiny_corpus_dir)
  config.checkpoint_every = 1000
  num_steps = config.num_steps
  workdir = str(tmp_path / "stopped")
  overrides = [f"--config.corpus_dir={config.corpus_dir}",
               f"--config.mesh.data={config.mesh.data}", f"--config.num_steps={num_steps}",
               f"--config.checkpoint_every={config.checkpoint_every}"]
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'dit.py')}:tiny", f"--workdir={workdir}"]
  code, err = _run_until(cmd + overrides, lambda line: "generator: " in line)
  assert code == preempt.PREEMPTED_EXIT, err[-3000:]
  match = re.search(rf"stopped by SIGTERM after step (\d+) of {num_steps} \(saved\); rerun "
                    "the same command to resume", err)
  assert match, err[-3000:]
  stopped = int(match.group(1))
  assert 0 < stopped < num_steps
  directory = os.path.join(workdir, "checkpoints")
  ckpt = ckpt_lib.Checkpointer(directory, {}, save_every=0)
  assert ckpt.all_steps() == [stopped]  # saved on the signal, not periodically
  ckpt.close()
  assert ckpt_lib.step_problem(directory, stopped) is None

  loop.train(config, workdir)  # the rerun
  a, b = full_state(workdir), full_state(tiny_trained_dir)
  assert int(a.step) == int(b.step) == num_steps
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # a child process: its start-up, and its compile where the cache lacks it
def test_sigterm_during_the_corpus_saves_the_shard_and_the_rerun_is_exact(tiny_corpus_dir,
                                                                          tmp_path):
  """SIGTERM once the first shard is written: the shard in progress is finished, the run
  exits with PREEMPTED_EXIT before joining the corpus, and the rerun equals the
  uninterrupted corpus."""
  reference = corpus_lib.open_corpus(tiny_corpus_dir)
  workdir = str(tmp_path)
  cmd = [sys.executable, os.path.join(ROOT, "launch", "make_corpus.py"),
         f"--config={os.path.join(ROOT, 'configs', 'corpus.py')}:tiny",
         f"--workdir={workdir}", "--config.num_devices=2"]
  code, err = _run_until(cmd, lambda line: "corpus: 4/16 nets" in line)
  assert code == preempt.PREEMPTED_EXIT, err[-3000:]
  match = re.search(r"stopped by SIGTERM after shard (\d+) \((\d+) of 16 nets\) \(saved\)", err)
  assert match, err[-3000:]
  last, nets = int(match.group(1)), int(match.group(2))
  assert last <= 2 and nets == 4 * (last + 1)  # the shard in progress, whole
  path = os.path.join(workdir, "corpus")
  assert not os.path.exists(os.path.join(path, "weights.npy"))
  for i in range(last + 1):
    assert os.path.exists(os.path.join(path, "shards", f"{i:05d}.sum.json"))
  assert not os.path.exists(os.path.join(path, "shards", f"{last + 1:05d}.jsonl"))

  config = corpus_config.get_config("tiny")
  config.num_devices = 2
  make_corpus_lib.make_corpus(config, workdir)
  resumed = corpus_lib.open_corpus(path)
  np.testing.assert_array_equal(resumed.weights, reference.weights)
  assert resumed.records == reference.records
  np.testing.assert_array_equal(resumed.base, reference.base)

"""Two processes on one machine (two CPU devices each, gloo collectives) work as one.

The launch scripts run as a user would run them on two hosts: the same command twice, with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set (docs/scaling_out.md).
Checked: the tiny corpus is byte for byte the corpus of one process with two devices; the
generator trained by the two processes (also with one of them 40 s late to the first step,
then through a kill -9 of one of them and a rerun) has the parameters of one process on
four devices; a SIGTERM to one of them stops both after the same step, saved, and the rerun
reaches the uninterrupted pair's state.
"""
import contextlib
import filecmp
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import dit as dit_config
from conftest import full_state, wait_for_children, xla_flags_without_device_count
from t2w_jax import multihost
from t2w_jax import preempt
from t2w_jax.errors import ConfigError
from t2w_jax import checkpoints as ckpt_lib
from t2w_jax.train import loop
from t2w_jax.train import mesh as mesh_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = [f"--config={os.path.join(ROOT, 'configs', 'corpus.py')}:tiny"]
STEPS = 12  # the tiny DiT's adversarial term starts at step 10: both losses are exercised
TRAIN = [f"--config={os.path.join(ROOT, 'configs', 'dit.py')}:tiny",
         f"--config.num_steps={STEPS}", "--config.adv_weight=0.01"]
# One launch's limits (conftest.wait_for_children): wall seconds without output or CPU use
# taken for a hang; CPU-seconds its processes may use together and wall seconds in all, on
# the reference machine (where the whole module takes about two minutes), both scaled by
# the conftest's `slowness`.
QUIET = 240
CPU_BUDGET = 900
WALL_CAP = 2400
# Files that record seconds spent, which differ between any two runs.
TIMED = {"progress.json", "summary.json"}


def _env(**extra) -> dict:
  """The children's environment: the tests' compile flags, two host devices each, offline,
  this checkout first, and one compilation cache (a rerun loads the programs its first run
  compiled)."""
  env = {k: v for k, v in os.environ.items() if k not in multihost.ENV_VARS.values()}
  flags = xla_flags_without_device_count()
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2",
             PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=_CACHE[0],
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", **extra)
  return env


_CACHE = [""]  # set by the module fixture below
_SCALE = [1.0]  # likewise: the conftest's slowness


@pytest.fixture(scope="module", autouse=True)
def _children_cache_and_scale(tmp_path_factory, slowness):
  _CACHE[0] = str(tmp_path_factory.mktemp("children_xla_cache"))
  _SCALE[0] = slowness
  yield


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _script(name: str) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "launch", f"{name}.py")]


@contextlib.contextmanager
def _running():
  """Collects child processes; on leaving (a failure or a timeout included) kills the
  process group of every one still running, so that no child outlives the test."""
  procs = []
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _start(procs: list, cmd: list[str], logs: str, tag: str, n: int = 2) -> list:
  """Starts ``cmd`` as processes 0..n-1 of an n-process run (one plain process for n = 1),
  each writing to ``logs/tag.i.log``; returns them."""
  port = _free_port()
  started = []
  for i in range(n):
    env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n),
               JAX_PROCESS_ID=str(i)) if n > 1 else _env()
    with open(os.path.join(logs, f"{tag}.{i}.log"), "w") as log:
      p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    procs.append(p)
    started.append(p)
  return started


def _start_pair(procs: list, cmd: list[str], logs: str, tag: str) -> list:
  return _start(procs, cmd, logs, tag, 2)


def _log(logs: str, tag: str, i: int = 0) -> str:
  with open(os.path.join(logs, f"{tag}.{i}.log")) as f:
    return f.read()


def _tail(logs: str, tag: str, n: int = 2) -> str:
  return "\n".join(f"--- process {i}:\n" + "".join(_log(logs, tag, i).splitlines(True)[-15:])
                   for i in range(n))


def _wait_while_working(procs: list, logs: str, tag: str, until=None) -> str | None:
  """conftest.wait_for_children with this module's limits: None, or why it gave up."""
  return wait_for_children(
      procs, [os.path.join(logs, f"{tag}.{i}.log") for i in range(len(procs))], quiet=QUIET,
      cpu_budget=CPU_BUDGET * _SCALE[0], wall_cap=WALL_CAP * _SCALE[0], until=until)


def _wait(procs: list, logs: str, tag: str) -> None:
  """Waits for the processes while they work; fails (with their logs' tails) on an error
  or when they stop making progress. Limits on progress rather than on the launch's wall
  time let a slow or busy machine finish."""
  problem = _wait_while_working(procs, logs, tag)
  if problem:
    pytest.fail(f"{tag}: {problem}\n{_tail(logs, tag, len(procs))}")
  rcs = [p.returncode for p in procs]
  assert rcs == [0] * len(procs), f"{tag}: exit statuses {rcs}\n{_tail(logs, tag, len(procs))}"


def _run(cmd: list[str], logs: str, tag: str, n: int = 2) -> str:
  """Runs ``cmd`` as n processes to the end; returns process 0's log."""
  with _running() as procs:
    _wait(_start(procs, cmd, logs, tag, n), logs, tag)
  return _log(logs, tag)


def _run_pair(cmd: list[str], logs: str, tag: str) -> None:
  _run(cmd, logs, tag, 2)


def _generator_state(workdir: str, corpus_dir: str):
  """The TrainState of the latest checkpoint in ``workdir``, on one device."""
  config = dit_config.get_config("tiny")
  config.corpus_dir = corpus_dir
  corpus = loop.open_training_corpus(config, workdir)
  spec = loop.load_or_make_spec(config, workdir, corpus)
  state, _ = loop.create_sharded_state(spec, config, mesh_lib.make_mesh(1, 1))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), spec.identity(),
                               save_every=0)
  state = ckpt.restore(state)
  ckpt.close()
  return jax.device_get(state)


def _assert_generators_equal(a, b, atol: float = 1e-5) -> None:
  assert int(a.step) == int(b.step) == STEPS
  for name in ("params", "ema_params"):
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(getattr(a, name)),
                                 jax.tree_util.tree_leaves_with_path(getattr(b, name))):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0,
                                 err_msg=f"{name}{jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One process: the tiny corpus on two devices (a child process, set up exactly as each
  of the pair is), and the generator trained on it in this process on four devices."""
  workdir = str(tmp_path_factory.mktemp("one_process"))
  _run(_script("make_corpus") + CORPUS + [f"--workdir={workdir}"],
       str(tmp_path_factory.mktemp("one_process_logs")), "corpus", 1)
  corpus_dir = os.path.join(workdir, "corpus")
  config = dit_config.get_config("tiny")
  config.corpus_dir = corpus_dir
  config.num_steps = STEPS
  config.adv_weight = 0.01  # as TRAIN: every loss of the step, adversarial included
  config.mesh.data = 4  # 4 of this process's 8 host devices
  gen_dir = os.path.join(workdir, "generator")
  loop.train(config, gen_dir)
  return corpus_dir, _generator_state(gen_dir, corpus_dir)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """The issue's commands, run as the README says: make_corpus, then train, as a pair."""
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  logs = str(tmp_path_factory.mktemp("logs"))
  _run_pair(_script("make_corpus") + CORPUS + [f"--workdir={workdir}"], logs, "corpus")
  _run_pair(_script("train") + TRAIN + [f"--workdir={workdir}"], logs, "train")
  return workdir, logs


@pytest.mark.slow
def test_corpus_is_the_one_process_corpus_byte_for_byte(reference, two_processes):
  ref_dir, _ = reference
  pair_dir = os.path.join(two_processes[0], "corpus")
  names = sorted(os.listdir(ref_dir))
  assert sorted(os.listdir(pair_dir)) == names
  shards = sorted(os.listdir(os.path.join(ref_dir, "shards")))
  assert sorted(os.listdir(os.path.join(pair_dir, "shards"))) == shards and shards
  same = [n for n in names if os.path.isfile(os.path.join(ref_dir, n)) and n not in TIMED]
  same += [os.path.join("shards", n) for n in shards]
  for name in same:
    if name == "generalist.json":  # also records its training's seconds
      with open(os.path.join(ref_dir, name)) as f, open(os.path.join(pair_dir, name)) as g:
        a, b = json.load(f), json.load(g)
      assert a.pop("seconds") > 0 and b.pop("seconds") > 0 and a == b
    else:
      assert filecmp.cmp(os.path.join(ref_dir, name), os.path.join(pair_dir, name),
                         shallow=False), f"corpus/{name} differs from one process's"
  assert {"weights.npy", "manifest.jsonl", "checksums.json", "base.npy"} <= set(same)
  with open(os.path.join(pair_dir, "progress.json")) as f:
    assert json.load(f)["processes"] == 2


@pytest.mark.slow
def test_corpus_resume_on_another_process_count_is_handled(reference, two_processes,
                                                          tmp_path):
  """A corpus begun by two processes, one shard lost, resumed by one: handled and said."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(two_processes[0], workdir, ignore=shutil.ignore_patterns(
      "checkpoints", "tb", ".t2w.lock*"))
  for name in ("00003.sum.json", "00003.npy", "00003.jsonl"):
    os.remove(os.path.join(workdir, "corpus", "shards", name))
  os.remove(os.path.join(workdir, "corpus", "checksums.json"))
  log = _run(_script("make_corpus") + CORPUS + [f"--workdir={workdir}"], str(tmp_path),
             "resume", 1)
  assert "was begun on 2 process(es) and is resumed on 1: handled" in log
  ref_dir, _ = reference
  for name in ("weights.npy", "manifest.jsonl", "checksums.json"):
    assert filecmp.cmp(os.path.join(ref_dir, name), os.path.join(workdir, "corpus", name),
                       shallow=False), name


@pytest.mark.slow
def test_generator_equals_one_process_on_four_devices(reference, two_processes):
  ref_dir, ref_state = reference
  workdir, logs = two_processes
  _assert_generators_equal(_generator_state(workdir, ref_dir), ref_state)
  # Metrics and TensorBoard events come from process 0 alone.
  assert os.listdir(os.path.join(workdir, "tb"))
  with open(os.path.join(logs, "train.0.log")) as f0, open(os.path.join(logs, "train.1.log")) as f1:
    assert f"step {STEPS}: " in f0.read() and f"step {STEPS}: " not in f1.read()


def _train_held_back(hold: str) -> list[str]:
  """launch/train.py's command, run through a ``python -c`` program that runs ``hold``
  (statements, indented two spaces) before each batch is placed."""
  program = f"""
import os, runpy, sys, time
from t2w_jax.train import loop
put_batch, late = loop.put_batch, [os.environ.get("JAX_PROCESS_ID") == "1"]
def held_back(*args, **kwargs):
{hold}
  return put_batch(*args, **kwargs)
loop.put_batch = held_back
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
  return [sys.executable, "-c", program] + _script("train")[1:]


# Process 1 held back before its first step (before it compiles the step) by more than the
# 30 s that XLA's CPU collectives wait for a peer when they first connect; it says so.
LATE_SECONDS = 40
_LATE_TRAIN = _train_held_back(
    "  if late[0]:\n    late[0] = False\n"
    f"    print('held back {LATE_SECONDS} s before the first step', flush=True)\n"
    f"    time.sleep({LATE_SECONDS})")
# Every step held back half a second (before its batch is placed), so that a signal sent
# once a checkpoint is written lands with steps left to run.
_SLOW_TRAIN = _train_held_back("  time.sleep(0.5)")
# The interrupted training's checkpoint period: its first run is killed once its first
# checkpoint is committed, its second is sent SIGTERM once it has written one of its own;
# each leaves most of the steps to the next run.
EVERY = 2


@pytest.fixture(scope="module")
def interrupted(two_processes, tmp_path_factory):
  """One training on the pair's corpus, interrupted twice: three pair runs of the same
  script and arguments (a checkpoint every EVERY steps), each resuming what the one before
  left. One pair run per interruption, rather than a fresh training for each, keeps the
  launches (a start-up and a compile in each process) few.

  1. ``late``: process 1 held back before its first step (``_LATE_TRAIN``); once the first
     checkpoint is committed, kill -9 of process 1, then of process 0.
  2. ``stopped``: every step held back a little (``_SLOW_TRAIN``); once the run has
     written a checkpoint of its own, SIGTERM to process 1 alone.
  3. ``resumed``: the plain command, to the end.

  Checked here: what the next run needs, each failure naming the behaviour that failed;
  the tests below check the rest. Returns a dict: ``workdir``, ``logs``, ``killed_at``
  (the newest checkpoint the kill left), ``trigger`` (the checkpoint whose appearance
  sent the SIGTERM), ``stopped_rcs`` (the second run's exit statuses) and ``after_stop``
  (the newest checkpoint the second run left, and ``step_problem``'s finding on it).
  """
  workdir = str(tmp_path_factory.mktemp("interrupted") / "run")
  logs = str(tmp_path_factory.mktemp("interrupted_logs"))
  corpus_dir = os.path.join(two_processes[0], "corpus")
  args = TRAIN + [f"--workdir={workdir}", f"--config.corpus_dir={corpus_dir}",
                  f"--config.checkpoint_every={EVERY}"]
  directory = os.path.join(workdir, "checkpoints")
  out = {"workdir": workdir, "logs": logs}

  with _running() as procs:
    pair = _start_pair(procs, _LATE_TRAIN + args, logs, "late")
    # Committed: its digests are written last; a kill between orbax's commit and the
    # digests would leave no intact checkpoint to resume from.
    first = os.path.join(directory, str(EVERY), ckpt_lib.DIGESTS_FILE)
    problem = _wait_while_working(pair, logs, "late", until=lambda: os.path.exists(first))
    assert os.path.exists(first), (
        f"no checkpoint {EVERY}: the first step did not wait for process 1, held back "
        f"{LATE_SECONDS} s? {problem}\n{_tail(logs, 'late')}")
    assert pair[1].poll() is None, "process 1 finished before it could be killed"
    os.killpg(pair[1].pid, signal.SIGKILL)
    pair[1].wait()
  # (Leaving the block killed process 0.)
  out["killed_at"] = max(int(s) for s in os.listdir(directory) if s.isdigit())

  out["trigger"] = trigger = out["killed_at"] + EVERY
  with _running() as procs:
    pair = _start_pair(procs, _SLOW_TRAIN + args, logs, "stopped")
    mark = os.path.join(directory, str(trigger))
    problem = _wait_while_working(pair, logs, "stopped", until=lambda: os.path.isdir(mark))
    assert os.path.isdir(mark), (f"the rerun after the kill wrote no checkpoint {trigger}: "
                                 f"{problem}\n{_tail(logs, 'stopped')}")
    assert all(p.poll() is None for p in pair), "a process finished before the SIGTERM"
    pair[1].send_signal(signal.SIGTERM)  # process 1 only
    problem = _wait_while_working(pair, logs, "stopped")
    assert problem is None, f"after the SIGTERM: {problem}\n{_tail(logs, 'stopped')}"
  out["stopped_rcs"] = [p.returncode for p in pair]
  newest = max(int(s) for s in os.listdir(directory) if s.isdigit())
  out["after_stop"] = newest, ckpt_lib.step_problem(directory, newest)

  _run_pair(_script("train") + args, logs, "resumed")
  return out


@pytest.mark.slow
def test_training_resumes_after_one_process_is_killed(reference, interrupted):
  """kill -9 of process 1 mid-run, then of process 0 (which JAX's coordination service
  would end within its heartbeat timeout, 100 s, if no collective failed first): the same
  script and arguments rerun resume from the last checkpoint both finished, and (through
  the SIGTERM of the second run and a last rerun) reach the same generator."""
  ref_dir, ref_state = reference
  killed_at = interrupted["killed_at"]
  assert EVERY <= killed_at < STEPS
  stopped = _log(interrupted["logs"], "stopped")
  assert f"restored step {killed_at}" in stopped, stopped[-3000:]
  _assert_generators_equal(_generator_state(interrupted["workdir"], ref_dir), ref_state)


@pytest.mark.slow
def test_a_process_late_to_the_first_step_is_waited_for(reference, interrupted):
  """A process that compiles or loads 40 s slower than the other (a busy host) used to fail
  the run when the first step's collective gave up on it; the step now waits for both: in
  the first run, process 1 held back that long, both processes went on to commit checkpoint
  EVERY (without it the fixture fails, saying so), and the training they began ends with
  the one-process generator."""
  ref_dir, ref_state = reference
  held = f"held back {LATE_SECONDS} s before the first step"
  logs = interrupted["logs"]
  assert held in _log(logs, "late", 1) and held not in _log(logs, "late", 0)
  assert interrupted["killed_at"] >= EVERY
  _assert_generators_equal(_generator_state(interrupted["workdir"], ref_dir), ref_state)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_after_one_step(two_processes, interrupted):
  """SIGTERM to process 1 alone, mid-run: both processes finish the same step, save it
  together and exit with PREEMPTED_EXIT; the same command rerun resumes from that step
  (not from the periodic checkpoint before it) and ends with the uninterrupted pair's
  state, bit for bit."""
  workdir, logs, trigger = interrupted["workdir"], interrupted["logs"], interrupted["trigger"]
  rcs = interrupted["stopped_rcs"]
  assert rcs == [preempt.PREEMPTED_EXIT] * 2, f"exit statuses {rcs}\n{_tail(logs, 'stopped')}"
  stopped = []
  for i in range(2):
    match = re.search(rf"stopped by SIGTERM after step (\d+) of {STEPS} \(saved\); rerun "
                      "the same command to resume", _log(logs, "stopped", i))
    assert match, f"process {i}:\n{_tail(logs, 'stopped')}"
    stopped.append(int(match.group(1)))
  step = stopped[0]
  assert stopped == [step, step] and trigger < step < STEPS, (stopped, trigger)
  assert "another process received SIGTERM" in _log(logs, "stopped", 0)
  assert interrupted["after_stop"] == (step, None)

  assert f"restored step {step}" in _log(logs, "resumed")
  a, b = full_state(workdir), full_state(two_processes[0])
  assert int(a.step) == int(b.step) == STEPS
  for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                               jax.tree_util.tree_leaves_with_path(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("env,flags,match", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12355", "JAX_NUM_PROCESSES": "2"}, {},
     "incomplete.*process_id"),
    ({"JAX_NUM_PROCESSES": "2"}, {"num_processes": 3}, "disagrees with JAX_NUM_PROCESSES"),
    ({"JAX_NUM_PROCESSES": "two"}, {}, "not a whole number"),
    ({}, {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, "out of range"),
    ({}, {"coordinator_address": "host", "num_processes": 2, "process_id": 0}, "host:port"),
])
def test_incomplete_or_inconsistent_settings_are_refused(env, flags, match):
  with pytest.raises(ConfigError, match=match):
    multihost.resolve(environ=env, **flags)


def test_settings_from_flags_environment_and_clusters():
  full = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
          "JAX_PROCESS_ID": "3"}
  assert multihost.resolve(environ={}) is None
  assert multihost.resolve(environ=full) == multihost.Settings("10.0.0.1:1234", 4, 3)
  assert multihost.resolve(process_id=3, environ=full).process_id == 3  # same value: fine
  assert multihost.resolve(environ={"JAX_NUM_PROCESSES": "1"}) is None
  # On a cluster JAX reads what is not given.
  slurm = multihost.resolve(environ={"SLURM_NTASKS": "8"})
  assert slurm == multihost.Settings(None, None, None, "SLURM")
  pod = multihost.resolve(environ={"TPU_WORKER_HOSTNAMES": "a,b", "JAX_PROCESS_ID": "1"})
  assert pod.process_id == 1 and pod.cluster == "Cloud TPU pod slice"
  assert multihost.detect_cluster({"TPU_WORKER_HOSTNAMES": "localhost"}) is None


def test_launch_scripts_refuse_incomplete_settings_in_one_line(tmp_path):
  env = _env(JAX_COORDINATOR_ADDRESS="127.0.0.1:12355", JAX_NUM_PROCESSES="2")
  out = subprocess.run(_script("train") + TRAIN + [f"--workdir={tmp_path}", "--process_id=5"],
                       env=env, capture_output=True, text=True, timeout=QUIET * _SCALE[0])
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith("error: process_id=5 is out of range")

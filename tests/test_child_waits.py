"""The tests' own waits for child processes (conftest): progress is output or CPU use, so a
child that only waits is caught, and one that works is waited for however slow it is."""
import os
import subprocess
import sys

import pytest

from conftest import cpu_seconds
from conftest import wait_for_children


@pytest.fixture
def children():
  procs = []
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()


def test_cpu_seconds_of_this_process_and_of_no_process():
  before = cpu_seconds(os.getpid())
  assert before is not None and before > 0
  sum(i * i for i in range(2_000_000))
  assert cpu_seconds(os.getpid()) > before
  done = subprocess.Popen([sys.executable, "-c", "pass"])
  done.wait()
  assert cpu_seconds(done.pid) is None  # reaped: nothing left to read


def test_a_child_that_only_waits_is_a_hang(children):
  children.append(subprocess.Popen(["sleep", "600"]))
  problem = wait_for_children(children, quiet=1.0, cpu_budget=1e9, wall_cap=1e9)
  assert problem and "a hang" in problem


def test_a_working_child_is_held_to_its_cpu_budget(children):
  children.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
  problem = wait_for_children(children, quiet=1e9, cpu_budget=0.5, wall_cap=1e9)
  assert problem and "more than its budget of 0.5" in problem


def test_a_child_that_finishes_or_meets_the_condition_ends_the_wait(children, tmp_path):
  log = tmp_path / "out.log"
  with open(log, "w") as f:
    children.append(subprocess.Popen([sys.executable, "-c", "print('done')"], stdout=f))
  assert wait_for_children(children, [str(log)], quiet=1e9, cpu_budget=1e9,
                           wall_cap=1e9) is None
  assert children[0].returncode == 0 and log.read_text() == "done\n"
  children.append(subprocess.Popen(["sleep", "600"]))
  assert wait_for_children(children[1:], quiet=1e9, cpu_budget=1e9, wall_cap=1e9,
                           until=lambda: True) is None
  assert children[1].poll() is None

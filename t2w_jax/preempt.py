"""Preemption: SIGTERM or SIGINT ends a long run at its next safe point, saved.

A Cloud TPU or a cluster sends SIGTERM before it takes a machine back; Ctrl-C sends
SIGINT. Inside ``stop_requests()`` either signal only sets a flag. The corpus builder looks
at it after each shard it writes (and after the generalist), the training loop after each
step; when it is set, they save and raise ``Preempted``, which the launch scripts turn into
one line and exit status ``PREEMPTED_EXIT``. Rerunning the same command resumes where the
run stopped, and reaches the bytes of an uninterrupted run. A second signal of the same
kind takes its usual effect at once (the process ends, or KeyboardInterrupt).

In a run of several processes (``t2w_jax.multihost``) each process builds its own corpus
shards, so each stops on its own flag; training saves one checkpoint from all processes,
so there every process votes with its flag in each train step and all stop after the
same step, once any one was signalled (``train.loop.compile_step``).
"""
import contextlib
import logging
import os
import signal
import threading

# EX_TEMPFAIL (sysexits.h): the run stopped on request after saving; rerun it to resume.
# Distinct from 0 (done), 1 (a bug) and 2 (a user error, ``cli.USER_ERROR_EXIT``).
PREEMPTED_EXIT = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """A run stopped by a signal after saving its progress; the message says where."""

  def __init__(self, signum: int, where: str):
    self.signum = signum
    super().__init__(f"stopped by {signal.Signals(signum).name} {where} (saved); rerun the "
                     "same command to resume")


class StopRequests:
  """The flag the handlers set; ``signum`` is the first signal received, or None."""

  def __init__(self):
    self.signum = None

  def __bool__(self) -> bool:
    return self.signum is not None

  def check(self, where: str) -> None:
    """Raises ``Preempted`` (naming ``where``, e.g. "after step 12") if a signal came.

    Call it once the progress up to ``where`` is saved.
    """
    if self.signum is not None:
      raise Preempted(self.signum, where)


@contextlib.contextmanager
def stop_requests(enabled: bool = True):
  """Within the block, SIGTERM and SIGINT set the yielded flag instead of ending the run.

  The previous handlers come back on exit. Outside the main thread (where Python cannot
  set handlers), or with ``enabled`` False, the flag is never set.

  Args:
    enabled: whether to catch the signals at all.

  Yields:
    A ``StopRequests``.
  """
  flag = StopRequests()
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = {s: signal.getsignal(s) for s in SIGNALS}

  def handler(signum, frame):
    if flag.signum == signum:  # asked twice: the signal's usual effect, now
      signal.signal(signum, previous[signum] or signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    if flag.signum is None:
      flag.signum = signum
      logging.warning("received %s: finishing the current step, then saving and stopping "
                      "(send it again to stop at once)", signal.Signals(signum).name)

  for s in SIGNALS:
    signal.signal(s, handler)
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h or signal.SIG_DFL)

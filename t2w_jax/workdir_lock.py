"""One writer per workdir: an advisory lock file, ``WORKDIR/.t2w.lock``.

The lock is an ``fcntl.flock`` on that file, so the kernel drops it when its holder dies
(kill -9 included): a stale lock can never block a later run. The file also records the
holder's pid and command, so that a refused writer can name the holder, and a run that
finds a dead holder's record (its pid still written in the file, but no lock held) says that
it takes over. On release the record is cleared; the file itself stays (unlinking a flock'd
file would let two processes lock two different files).

Not for network filesystems, where ``flock`` may be emulated or absent: there the
lock is only as good as the filesystem's.
"""
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys

from t2w_jax.errors import BusyError

LOCK_FILE = ".t2w.lock"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by someone else
    return True
  return True


def _read_holder(f) -> dict:
  f.seek(0)
  try:
    return json.loads(f.read() or "{}")
  except ValueError:  # a half-written record: its writer died mid-write
    return {}


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str, name: str | None = None):
  """Holds the workdir's writer lock for the duration of a ``with`` block.

  Args:
    workdir: the run directory (created if missing).
    what: what this process does there ("make_corpus", "train"), for the messages.
    name: the lock file's name in workdir (default LOCK_FILE).

  Yields:
    None.

  Raises:
    BusyError: another live process holds the lock; the message names its pid.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name or LOCK_FILE)
  f = open(path, "a+")
  try:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(f)
      raise BusyError(
          f"workdir {workdir} is in use by {holder.get('what', 'another run')} "
          f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}); wait for it to "
          f"finish or stop it, or use another --workdir") from None
    old = _read_holder(f)
    if old.get("pid") is not None:
      # The lock was free, yet a record is there: its writer died without releasing.
      state = "no longer running" if not _pid_alive(int(old["pid"])) else "not holding it"
      logging.warning("workdir %s: taking over the lock of %s (pid %s), %s", workdir,
                      old.get("what", "a run"), old["pid"], state)
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                        "argv": sys.argv[:4]}))
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      f.flush()
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
  finally:
    f.close()

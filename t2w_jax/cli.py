"""The shared command line of the launch/ scripts: ``--config=FILE[:variant] --workdir=DIR``.

Each script calls ``platform.setup_host_devices()`` first (before JAX is imported), then
``cli.main(fn, what=...)``: ``--config`` is an ml_collections config file (with
``--config.key=value`` overrides), ``--workdir`` the run directory, and ``fn(config,
workdir)`` does the work; a string it returns is printed. The scripts that run on
devices (make_corpus, train, evaluate) also take ``--coordinator_address``,
``--num_processes`` and ``--process_id`` for multi-process runs (``t2w_jax/multihost.py``).

An expected user error (``t2w_jax.errors.UserError``: a bad config value, a missing
workdir, corpus or generator, a busy workdir) ends the run with one line on stderr and
exit status 2; a run stopped by SIGTERM or SIGINT after saving (``t2w_jax.preempt``) with
one line and exit status ``preempt.PREEMPTED_EXIT`` (75); anything else keeps its
traceback, since it is a bug.
"""
import functools
import os
import sys
import traceback
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from t2w_jax import io as io_lib
from t2w_jax.errors import UserError
from t2w_jax.preempt import PREEMPTED_EXIT, Preempted

USER_ERROR_EXIT = 2


def user_errors_exit(fn: Callable) -> Callable:
  """Wraps an absl ``main(argv)``: a UserError becomes one stderr line and exit status 2,
  a ``Preempted`` run one stderr line and exit status ``PREEMPTED_EXIT``.

  Args:
    fn: the function ``app.run`` would call.

  Returns:
    The wrapped function.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except Preempted as e:  # saved: the rerun resumes, so not an error
      print(str(e), file=sys.stderr, flush=True)
      _exit(PREEMPTED_EXIT)
    except UserError as e:
      # One line: the message is written to be enough on its own.
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      _exit(USER_ERROR_EXIT)
    except Exception:  # a bug: its traceback, and no wait for the other processes
      if not _in_multiprocess_run():
        raise
      traceback.print_exc()
      _exit(1)
  return wrapped


def _in_multiprocess_run() -> bool:
  multihost = sys.modules.get("t2w_jax.multihost")  # not imported: no run joined either
  return bool(multihost and multihost.joined())


def _exit(status: int) -> None:
  """Exits with ``status``; in a multi-process run at once, skipping exit handlers.

  JAX's exit handler waits (minutes) at a shutdown barrier for every process, while the
  others wait for this one at their next barrier; leaving at once instead makes them fail
  promptly (the coordination service reports the lost process to them).
  """
  if _in_multiprocess_run():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s flags_parser: a bad flag or config is one stderr line and exit status 2.

  ml_collections reports an error raised inside a config file (an unknown variant, say)
  with that file's traceback; the line the user needs is its last one.

  Args:
    argv: the command line.

  Returns:
    The arguments left after the flags.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
      lines = [lines[0], lines[-1]]
    print(f"error: {' '.join(lines)} (see --helpshort)", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT)


def check_output_file(path: str, flag: str = "--out") -> None:
  """Refuses an output file path that cannot be written, before any work is done.

  Args:
    path: the file to be written.
    flag: the command-line flag that gave it, for the message.

  Raises:
    ConfigError: the path is a directory (or empty).
    MissingError: its directory does not exist.
  """
  io_lib.check_output_path(path, flag)


def corpus_class_names(gen) -> list[str] | None:
  """The class names of the corpus a generator was trained on, to parse ``--text`` with.

  A description is read preferring these names (``text.parse_description``'s ``known``),
  so that a class name holding "and" or "/" stays whole.

  Args:
    gen: an ``api.Generator`` loaded from a workdir.

  Returns:
    The names, or None (logged) when the corpus is not where the generator's config says.
  """
  corpus_dir = gen.config.get("corpus_dir") or (
      os.path.join(gen.workdir, "corpus") if gen.workdir else None)
  if corpus_dir is None:
    return None
  from t2w_jax.zoo import corpus as corpus_lib  # local: importing cli does not import JAX
  try:
    return list(corpus_lib.open_corpus(corpus_dir, verify=False).class_names)
  except UserError as e:  # the text is still parsed, without the corpus's names
    logging.warning("class names of the corpus not read (%s); parsing the text without them",
                    " ".join(str(e).split()))
    return None


def define_multiprocess_flags() -> Callable[[], None]:
  """Defines --coordinator_address, --num_processes and --process_id (``t2w_jax.multihost``).

  Returns:
    A function that joins this process to its run with the parsed flags (and the
    ``JAX_*`` environment variables for those not given); call it before any JAX work.
  """
  address = flags.DEFINE_string(
      "coordinator_address", None, "multi-process runs: host:port of process 0 "
      "(default: $JAX_COORDINATOR_ADDRESS; not needed on TPU pods, SLURM, Open MPI)")
  count = flags.DEFINE_integer(
      "num_processes", None, "multi-process runs: the number of processes "
      "(default: $JAX_NUM_PROCESSES)")
  index = flags.DEFINE_integer(
      "process_id", None, "multi-process runs: this process's index, 0..num_processes-1 "
      "(default: $JAX_PROCESS_ID)")

  def join():
    from t2w_jax import multihost  # local: importing cli does not import JAX
    multihost.initialize(address.value, count.value, index.value)
  return join


def main(fn: Callable[..., str | None], *, what: str, workdir_help: str = "run directory",
         multiprocess: bool = False) -> None:
  """Defines --config and --workdir, then runs ``fn(config, workdir)`` under absl.

  Args:
    fn: the work.
    what: what the config configures, for the help.
    workdir_help: the help of --workdir.
    multiprocess: also define the multi-process flags (``define_multiprocess_flags``)
      and join the run before ``fn``: for the scripts that run on devices.
  """
  config = config_flags.DEFINE_config_file("config", None, f"{what} config file",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])
  join = define_multiprocess_flags() if multiprocess else None

  def _main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    if join is not None:
      join()
    out = fn(config.value, workdir.value)
    if out is not None:
      print(out, flush=True)

  app.run(user_errors_exit(_main), flags_parser=parse_flags)

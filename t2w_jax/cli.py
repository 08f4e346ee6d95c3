"""The shared command line of the launch/ scripts: ``--config=FILE[:variant] --workdir=DIR``.

Each script calls ``platform.setup_host_devices()`` first (before JAX is imported), then
``cli.main(fn, what=...)``: ``--config`` is an ml_collections config file (with
``--config.key=value`` overrides), ``--workdir`` the run directory, and ``fn(config,
workdir)`` does the work; a string it returns is printed.
"""
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags


def main(fn: Callable[..., str | None], *, what: str,
         workdir_help: str = "run directory") -> None:
  """Defines --config and --workdir, then runs ``fn(config, workdir)`` under absl."""
  config = config_flags.DEFINE_config_file("config", None, f"{what} config file",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])

  def _main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    out = fn(config.value, workdir.value)
    if out is not None:
      print(out, flush=True)

  app.run(_main)

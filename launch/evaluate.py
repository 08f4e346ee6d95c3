"""Evaluate a trained generator against every baseline and print the table.

  python launch/evaluate.py --config=configs/eval.py --workdir=runs/default
  python launch/evaluate.py --config=configs/eval.py:tiny --workdir=/tmp/t2w_tiny

Reads WORKDIR/corpus and the generator in WORKDIR (or --config.corpus_dir /
--config.generator_dir); writes WORKDIR/eval/results.json and WORKDIR/eval/table.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from t2w_jax.evaluate import run  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "evaluation config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  results = run.evaluate(_CONFIG.value, _WORKDIR.value)
  print(results["table"], flush=True)


if __name__ == "__main__":
  app.run(main)

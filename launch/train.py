"""Train the text-to-weights generator on a corpus.

  python launch/train.py --config=configs/dit.py --workdir=runs/default
  python launch/train.py --config=configs/dit.py:tiny --workdir=/tmp/t2w_tiny

The corpus is read from WORKDIR/corpus (or --config.corpus_dir). Rerunning with the same
--workdir resumes from the latest checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from t2w_jax.train import loop  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "generator config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  metrics = loop.train(_CONFIG.value, _WORKDIR.value)
  logging.info("done: %s", metrics)


if __name__ == "__main__":
  app.run(main)

"""Build the text–weight corpus.

  python launch/make_corpus.py --config=configs/corpus.py --workdir=runs/default
  python launch/make_corpus.py --config=configs/corpus.py:tiny --workdir=/tmp/t2w_tiny \
      --config.num_seen=20

Rerunning with the same --workdir resumes an interrupted run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from t2w_jax.zoo import make_corpus as make_corpus_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "corpus config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (the corpus goes in workdir/corpus)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  summary = make_corpus_lib.make_corpus(_CONFIG.value, _WORKDIR.value)
  print(make_corpus_lib.format_summary(summary), flush=True)


if __name__ == "__main__":
  app.run(main)

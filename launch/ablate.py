"""Train and evaluate the generator ablations on an existing corpus (see configs/ablations.py).

  python launch/ablate.py --config=configs/ablations.py --workdir=runs/default
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from t2w_jax.evaluate import ablations  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "ablation config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory holding corpus/")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  out = ablations.run_ablations(_CONFIG.value, _WORKDIR.value)
  print(out["table"], flush=True)


if __name__ == "__main__":
  app.run(main)

"""Train and evaluate the generator ablations on an existing corpus (see configs/ablations.py).

  python launch/ablate.py --config=configs/ablations.py --workdir=runs/default
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from t2w_jax import cli  # noqa: E402
from t2w_jax.evaluate import ablations  # noqa: E402


def _ablate(config, workdir):
  return ablations.run_ablations(config, workdir)["table"]


if __name__ == "__main__":
  cli.main(_ablate, what="ablation", workdir_help="run directory holding corpus/")

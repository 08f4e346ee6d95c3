"""Train the text-to-weights generator on a corpus.

  python launch/train.py --config=configs/dit.py --workdir=runs/default
  python launch/train.py --config=configs/dit.py:tiny --workdir=/tmp/t2w_tiny

The corpus is read from WORKDIR/corpus (or --config.corpus_dir). Rerunning with the same
--workdir resumes from the latest checkpoint.

Several processes or hosts: the same command in each, with --coordinator_address,
--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID; none on TPU pods, SLURM, Open MPI) and a shared --workdir
(docs/scaling_out.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)

platform.setup_host_devices()

from absl import logging  # noqa: E402

from t2w_jax import cli  # noqa: E402
from t2w_jax.train import loop  # noqa: E402


def _train(config, workdir):
  logging.info("done: %s", loop.train(config, workdir))


if __name__ == "__main__":
  cli.main(_train, what="generator", multiprocess=True)

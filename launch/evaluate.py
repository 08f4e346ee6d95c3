"""Evaluate a trained generator against every baseline and print the table.

  python launch/evaluate.py --config=configs/eval.py --workdir=runs/default
  python launch/evaluate.py --config=configs/eval.py:tiny --workdir=/tmp/t2w_tiny

Reads WORKDIR/corpus and the generator in WORKDIR (or --config.corpus_dir /
--config.generator_dir); writes WORKDIR/eval/results.json and WORKDIR/eval/table.md.

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

from t2w_jax import cli  # noqa: E402
from t2w_jax.evaluate import run  # noqa: E402


def _evaluate(config, workdir):
  return run.evaluate(config, workdir)["table"]


if __name__ == "__main__":
  cli.main(_evaluate, what="evaluation", multiprocess=True)

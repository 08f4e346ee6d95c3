"""Build the text–weight corpus.

  python launch/make_corpus.py --config=configs/corpus.py --workdir=runs/default
  python launch/make_corpus.py --config=configs/corpus.py:tiny --workdir=/tmp/t2w_tiny \
      --config.num_seen=20

Rerunning with the same --workdir resumes an interrupted run.

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
from t2w_jax.zoo import make_corpus as make_corpus_lib  # noqa: E402


def _make_corpus(config, workdir):
  return make_corpus_lib.format_summary(make_corpus_lib.make_corpus(config, workdir))


if __name__ == "__main__":
  cli.main(_make_corpus, what="corpus",
           workdir_help="run directory (the corpus goes in workdir/corpus)", multiprocess=True)

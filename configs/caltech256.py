"""Corpus config for caltech256 (see configs/real_data.py and docs/datasets.md).

  python launch/make_corpus.py --config=configs/caltech256.py:gpu --workdir=runs/caltech256
  python launch/train.py --config=configs/dit.py:base --workdir=runs/caltech256
  python launch/evaluate.py --config=configs/eval.py --workdir=runs/caltech256

Variants: gpu (default), pod, cpu, tiny.
"""
from configs import real_data


def get_config(arg=None):
  return real_data.real_data_config("caltech256", arg)

"""Corpus config for tinyimagenet (see configs/real_data.py and docs/datasets.md).

  python launch/make_corpus.py --config=configs/tinyimagenet.py:gpu --workdir=runs/tinyimagenet
  python launch/train.py --config=configs/dit.py:base --workdir=runs/tinyimagenet
  python launch/evaluate.py --config=configs/eval.py --workdir=runs/tinyimagenet

Variants: gpu (default), pod, cpu, tiny.
"""
from configs import real_data


def get_config(arg=None):
  return real_data.real_data_config("tinyimagenet", arg)

"""Corpus config for cifar100 (see configs/real_data.py and docs/datasets.md).

  python launch/make_corpus.py --config=configs/cifar100.py:gpu --workdir=runs/cifar100
  python launch/train.py --config=configs/dit.py:base --workdir=runs/cifar100
  python launch/evaluate.py --config=configs/eval.py --workdir=runs/cifar100

Variants: gpu (default), pod, cpu, tiny.
"""
from configs import real_data


def get_config(arg=None):
  return real_data.real_data_config("cifar100", arg)

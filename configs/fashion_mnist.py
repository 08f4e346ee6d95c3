"""Corpus config for fashion_mnist (see configs/real_data.py and the README's section on fashion_mnist).

  python launch/make_corpus.py --config=configs/fashion_mnist.py:gpu --workdir=runs/fashion_mnist
  python launch/train.py --config=configs/dit.py:base --workdir=runs/fashion_mnist
  python launch/evaluate.py --config=configs/eval.py --workdir=runs/fashion_mnist

Variants: gpu (default), pod, cpu, tiny.
"""
from configs import real_data


def get_config(arg=None):
  c = real_data.real_data_config("fashion_mnist", arg)
  c.min_classes = min(c.min_classes, 4)  # only 10 classes
  c.max_classes = min(c.max_classes, 8)
  c.heldout_frac = 0.2
  if arg != "tiny":
    # 8 seen classes allow only ~160 distinct tasks of 4-8 classes.
    c.num_seen, c.num_unseen, c.num_heldout = 120, 20, 20
  return c

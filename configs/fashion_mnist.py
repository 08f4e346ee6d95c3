"""Corpus config for fashion_mnist (see configs/real_data.py and docs/datasets.md).

  python launch/make_corpus.py --config=configs/fashion_mnist.py:gpu --workdir=runs/fashion_mnist
  python launch/train.py --config=configs/dit.py:base --workdir=runs/fashion_mnist
  python launch/evaluate.py --config=configs/eval.py --workdir=runs/fashion_mnist

Variants: gpu (default), pod, cpu, tiny, and "main": the embedded default's main job
(configs/corpus.py: MiniLM text, 16x16 images, the cnn2k net, tasks of 2-4 classes) on
Fashion-MNIST, the setting of the Fashion-MNIST table of docs/results.md:

  python launch/make_corpus.py --config=configs/fashion_mnist.py:main --workdir=runs/fmnist
  python launch/train.py --config=configs/dit.py --workdir=runs/fmnist
  python launch/evaluate.py --config=configs/eval.py --workdir=runs/fmnist
"""
from configs import corpus as corpus_config
from configs import real_data


def get_config(arg=None):
  if arg == "main":
    c = corpus_config.get_config()
    c.dataset = "fashion_mnist"
    c.heldout_frac = 0.2  # 2 of the 10 classes
    # 8 seen classes make 154 tasks of 2-4 classes; the unseen ones must be new combinations.
    c.num_seen, c.num_unseen, c.num_heldout = 120, 20, 20
    return c
  c = real_data.real_data_config("fashion_mnist", arg)
  c.min_classes = min(c.min_classes, 4)  # only 10 classes
  c.max_classes = min(c.max_classes, 8)
  c.heldout_frac = 0.2
  if arg != "tiny":
    # 8 seen classes allow only ~160 distinct tasks of 4-8 classes.
    c.num_seen, c.num_unseen, c.num_heldout = 120, 20, 20
  return c

"""Shared settings of the real-dataset corpus configs (cifar100.py, caltech256.py, ...).

Real data uses CLIP ViT-B/32 text embeddings (512-d) like the paper, falling back to the
packaged MiniLM with a logged warning when CLIP's weights are not available locally or
from the hub. Images are 32x32 and the subtask CNN is wider than the embedded default's.
"""
import ml_collections

from configs import corpus as corpus_config

CLIP = "clip:openai/clip-vit-base-patch32"


def real_data_config(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """A corpus config for ``dataset``; arg: "gpu" (default), "pod", "cpu" or "tiny"."""
  arg = arg or "gpu"
  c = corpus_config.get_config()
  c.dataset = dataset
  c.image_size = 32
  c.text_encoder = CLIP
  c.text_fallback = "minilm"
  c.model.widths = (16, 32, 64)
  c.heldout_frac = 0.1
  # The paper's own setting: tasks of 8-31 classes.
  c.min_classes, c.max_classes = 8, 31
  if arg == "gpu":
    # The PyTorch reference's corpus: 12,000 tasks of 8-31 classes.
    c.num_seen, c.num_unseen, c.num_heldout = 12_000, 500, 500
    c.base.update(max_steps=50_000, batch_size=256, eval_every=1000)
    c.trainer.update(steps=500, batch_size=64, conv_impl="lax", nets_per_chunk=256)
    c.shard_size = 1024
  elif arg == "pod":
    c.num_seen, c.num_unseen, c.num_heldout = 100_000, 2000, 2000
    c.base.update(max_steps=100_000, batch_size=512, eval_every=2000)
    c.trainer.update(steps=1000, batch_size=64, conv_impl="lax", nets_per_chunk=512)
    c.shard_size = 8192
  elif arg == "cpu":
    c.num_seen, c.num_unseen, c.num_heldout = 300, 32, 32
    c.trainer.update(steps=150, nets_per_chunk=8, conv_impl="im2col")
    c.image_size = 16
  elif arg == "tiny":
    c.num_seen, c.num_unseen, c.num_heldout = 8, 4, 4
    c.min_classes, c.max_classes = 3, 6
    c.model.widths = (8, 16, 32)
    c.image_size = 16
    c.val_per_class = 10
    c.base.update(max_steps=60, eval_every=30, patience=1, lr_drops=0)
    c.trainer.update(steps=30, eval_every=10, patience=2, eval_per_class=20, nets_per_chunk=2,
                     conv_impl="im2col")
    c.shard_size = 4
    c.text_encoder = "minilm"
  else:
    raise ValueError(f"unknown variant {arg!r} for {dataset}; use gpu, pod, cpu or tiny")
  return c

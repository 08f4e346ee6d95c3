"""Corpus config: the embedded procedural dataset, MiniLM text, 1,000+ subtask nets.

Run (from the repository root):

  python launch/make_corpus.py --config=configs/corpus.py --workdir=runs/default
  python launch/make_corpus.py --config=configs/corpus.py:tiny --workdir=/tmp/t2w_tiny
  python launch/make_corpus.py --config=configs/corpus.py --workdir=DIR --config.num_seen=200

``get_config(arg)``: arg "" (default) or "tiny" (a few nets, for tests and smoke runs);
"adapter" and "adapter_tiny" are the same with the T2W paper's subtask family (a frozen
feature trunk trained on the seen classes, and a generated bottleneck adapter into the text
space; t2w_jax/zoo/family.py).
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data: the embedded procedural dataset, trained at 16x16 for speed on CPU.
  c.dataset = "shapes"
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.image_size = 16
  # Text.
  c.text_encoder = "minilm"
  c.template = "a photo of a {}"
  # Subtask CNN (18.7K parameters with MiniLM's 384-d text space). ``family`` picks the
  # generated net (t2w_jax/zoo/family.py): "cnn" this CNN, "adapter" a bottleneck adapter
  # on a frozen trunk (the "adapter" variants below).
  c.model = ml_collections.ConfigDict(dict(family="cnn", widths=(8, 16, 32), strides=(1, 2, 2),
                                           logit_scale=10.0))
  # Tasks and splits.
  c.num_seen = 904  # + 48 + 48 = 1,000 nets
  c.num_unseen = 48
  c.num_heldout = 48
  c.min_classes = 8
  c.max_classes = 32
  c.heldout_frac = 0.1
  # Shared base net, trained briefly on all seen classes: a generalist starting point.
  # Trained to convergence (3,000 steps) it is nearly as good as the specialists on their
  # own tasks (measured: base 69.8 %, fine-tuned 70.3 %), which leaves the corpus without
  # task-dependent signal; 300 steps leaves room for +12 points of specialisation.
  c.base = ml_collections.ConfigDict(dict(steps=300, batch_size=128, learning_rate=3e-3))
  # Per-task fine-tuning from the base, many nets per compiled call.
  c.trainer = ml_collections.ConfigDict(dict(
      steps=300, batch_size=64, learning_rate=3e-3, eval_per_class=50,
      # Backend-dependent shape (see zoo/masstrain.py): im2col survives vmap and scan on
      # XLA:CPU. One net per vmap chunk there: wider chunks run faster on one core, but then
      # the second core adds nothing (our reading: their working set overflows the caches
      # the two cores share). Measured, 300 steps, 2 devices: 1 net/chunk 814 net-steps/s,
      # 2: 501, 8: 455 (exploratory runs; README, "Benchmarks").
      # On a GPU use conv_impl="lax" and a chunk of 128 or more.
      conv_impl="im2col", nets_per_chunk=1))
  c.num_devices = 0  # devices the nets are spread over (0: all local devices)
  c.shard_size = 64  # nets per compiled call and per on-disk shard (rounded to the mesh)

  if arg not in (None, "", "tiny", "adapter", "adapter_tiny"):
    raise ValueError(f"unknown corpus config variant {arg!r}; use '', 'tiny', 'adapter' or "
                     "'adapter_tiny'")
  if arg in ("adapter", "adapter_tiny"):
    # The T2W paper's family: only the adapter (64*16+16 + 16*384+384 = 7,568 parameters
    # with MiniLM) is generated; the trunk is trained once, like the base net, on the seen
    # classes, and its features are computed once for the whole corpus.
    c.model = ml_collections.ConfigDict(dict(
        family="adapter", trunk_widths=(16, 32, 64), trunk_strides=(1, 2, 2), bottleneck=16,
        logit_scale=10.0))
    c.trunk_train = ml_collections.ConfigDict(dict(steps=300, batch_size=128,
                                                   learning_rate=3e-3))
  if arg == "adapter_tiny":
    c.model.trunk_widths, c.model.trunk_strides, c.model.bottleneck = (8, 16), (1, 2), 8
    c.trunk_train.steps = 100
  if arg in ("tiny", "adapter_tiny"):
    c.num_seen, c.num_unseen, c.num_heldout = 8, 4, 4
    c.min_classes, c.max_classes = 3, 6
    c.base.steps = 100
    c.trainer.steps = 40
    c.trainer.eval_per_class = 20
    c.trainer.nets_per_chunk = 2
    c.shard_size = 4
    c.dataset_kwargs = ml_collections.ConfigDict(dict(train_per_class=60, test_per_class=20))
  if "dataset_kwargs" not in c:
    c.dataset_kwargs = ml_collections.ConfigDict()
  return c

"""Corpus config: the embedded procedural dataset, MiniLM text, 1,000+ subtask nets.

Run (from the repository root):

  python launch/make_corpus.py --config=configs/corpus.py --workdir=runs/default
  python launch/make_corpus.py --config=configs/corpus.py:tiny --workdir=/tmp/t2w_tiny
  python launch/make_corpus.py --config=configs/corpus.py --workdir=DIR --config.num_seen=200

``get_config(arg)``: arg "" (default), "tiny" (a few nets, for tests and smoke runs), or
comma-separated settings of the room sweep (launch/sweep_room.py), e.g. "net=cnn4k,tasks=2-4":
``net`` one of NETS, ``tasks`` the task-size range "MIN-MAX" (classes per task).
"""
import ml_collections

# Subtask nets by name: the CNN family at three sizes (parameters with MiniLM's 384-d text
# space; the text-space head holds most of them).
NETS = {
    "cnn19k": dict(widths=(8, 16, 32), strides=(1, 2, 2)),   # 18,704 parameters
    "cnn8k": dict(widths=(4, 8, 16), strides=(1, 2, 2)),     # 8,104
    "cnn4k": dict(widths=(4, 4, 8), strides=(1, 2, 2)),      # 4,012
    "cnn2k": dict(widths=(4, 4, 4), strides=(1, 2, 2)),      # 2,328
}


def _apply_settings(c: ml_collections.ConfigDict, arg: str) -> None:
  """Applies "key=value,..." sweep settings (net=NAME, tasks=MIN-MAX) to a config."""
  for item in arg.split(","):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"unknown corpus config variant {arg!r}; use '', 'tiny' or "
                       f"'net=NAME,tasks=MIN-MAX'")
    if key == "net":
      if value not in NETS:
        raise ValueError(f"unknown net {value!r}; known: {sorted(NETS)}")
      c.model.update(NETS[value])
    elif key == "tasks":
      lo, _, hi = value.partition("-")
      c.min_classes, c.max_classes = int(lo), int(hi or lo)
    else:
      raise ValueError(f"unknown corpus setting {key!r} in {arg!r}; use net= or tasks=")


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
  # Subtask CNN (18.7K parameters with MiniLM's 384-d text space).
  c.model = ml_collections.ConfigDict(dict(widths=(8, 16, 32), strides=(1, 2, 2),
                                           logit_scale=10.0))
  # Tasks and splits.
  c.num_seen = 904  # + 48 + 48 = 1,000 nets
  c.num_unseen = 48
  c.num_heldout = 48
  c.min_classes = 8
  c.max_classes = 32
  c.heldout_frac = 0.1
  # Validation images per class, carved from the training images (never the test images);
  # the generalist and the specialists early-stop on them.
  c.val_per_class = 50
  # The generalist: the same net on all seen classes until its validation accuracy stops
  # improving (a check every eval_every steps; after `patience` checks without a gain the
  # rate drops tenfold, lr_drops times, then the next plateau ends it; max_steps caps it).
  # It is the bar of every table and the shared start of every corpus net.
  c.base = ml_collections.ConfigDict(dict(max_steps=20000, batch_size=128,
                                          learning_rate=3e-3, eval_every=250, patience=3,
                                          lr_drops=2))
  # The specialists: per-task fine-tuning from the generalist, many nets per compiled call,
  # each early-stopped on its task's validation images (steps is the cap).
  c.trainer = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=64, learning_rate=3e-3, eval_per_class=50,
      eval_every=50, patience=10,
      # Backend-dependent shape (see zoo/masstrain.py): im2col survives vmap and scan on
      # XLA:CPU. One net per vmap chunk there: wider chunks run faster on one core, but then
      # the second core adds nothing (our reading: their working set overflows the caches
      # the two cores share; figures in docs/bench/). On a GPU use conv_impl="lax" and a
      # chunk of 128 or more.
      conv_impl="im2col", nets_per_chunk=1))
  c.num_devices = 0  # devices the nets are spread over (0: all local devices)
  c.shard_size = 64  # nets per compiled call and per on-disk shard (rounded to the mesh)

  if arg == "tiny":
    c.num_seen, c.num_unseen, c.num_heldout = 8, 4, 4
    c.min_classes, c.max_classes = 2, 4
    c.model.update(NETS["cnn2k"])
    c.val_per_class = 10
    c.base.update(max_steps=300, eval_every=50, patience=2, lr_drops=1)
    c.trainer.update(steps=60, eval_every=10, patience=3, learning_rate=3e-3)
    c.trainer.eval_per_class = 20
    c.trainer.nets_per_chunk = 2
    c.shard_size = 4
    c.dataset_kwargs = ml_collections.ConfigDict(dict(train_per_class=60, test_per_class=20))
  elif arg:
    _apply_settings(c, arg)
  if "dataset_kwargs" not in c:
    c.dataset_kwargs = ml_collections.ConfigDict()
  return c

"""Corpus config: the embedded procedural dataset, MiniLM text, hundreds of subtask nets.

Run (from the repository root):

  python launch/make_corpus.py --config=configs/corpus.py --workdir=runs/default
  python launch/make_corpus.py --config=configs/corpus.py:tiny --workdir=/tmp/t2w_tiny
  python launch/make_corpus.py --config=configs/corpus.py --workdir=DIR --config.num_seen=200

``get_config(arg)``: comma-separated named variants and settings:

* "" : the default; "tiny": a few nets, for tests and smoke runs;
* "full": the corpus size of the best result found at any size (FULL_NUM_SEEN seen nets;
  the scaling curve in docs/results.md), beyond the main job's 20 minutes;
* "adapter": the T2W paper's subtask family (a frozen feature trunk trained on the seen
  classes, and a generated bottleneck adapter into the text space; t2w_jax/zoo/family.py);
  "adapter_tiny" = "adapter,tiny";
* "net=NAME" (one of NETS) and "tasks=MIN-MAX" (classes per task): the room sweep's settings
  (launch/sweep_room.py), e.g. "net=cnn4k,tasks=2-4".
"""
import ml_collections

from t2w_jax.zoo import masstrain

# The recipe's defaults (batch size, learning rate, patience) live in the trainer's spec.
_RECIPE = masstrain.TrainerSpec()

# Subtask nets by name (parameters with MiniLM's 384-d text space). The CNN family at four
# sizes (the text-space head holds most of their parameters), and the adapter family: only
# the bottleneck adapter (d_f -> bottleneck -> 384) on the frozen trunk's d_f=64 features is
# generated.
NETS = {
    "cnn19k": dict(family="cnn", widths=(8, 16, 32), strides=(1, 2, 2)),   # 18,704
    "cnn8k": dict(family="cnn", widths=(4, 8, 16), strides=(1, 2, 2)),     # 8,104
    "cnn4k": dict(family="cnn", widths=(4, 4, 8), strides=(1, 2, 2)),      # 4,012
    "cnn2k": dict(family="cnn", widths=(4, 4, 4), strides=(1, 2, 2)),      # 2,328
    "adapter16": dict(family="adapter", trunk_widths=(16, 32, 64), trunk_strides=(1, 2, 2),
                      bottleneck=16),                                     # 7,568
    "adapter4": dict(family="adapter", trunk_widths=(16, 32, 64), trunk_strides=(1, 2, 2),
                     bottleneck=4),                                       # 2,180
}


# Seen nets of the "full" variant: the size of the scaling curve's best generated nets
# (docs/results.md, "Scaling"; docs/results/scaling.json), 10,000 nets with the unseen and held-out.
FULL_NUM_SEEN = 9904


def _use_net(c: ml_collections.ConfigDict, name: str) -> None:
  """Sets the subtask net (and, for the adapter family, the trunk's training) by name."""
  if name not in NETS:
    raise ValueError(f"unknown net {name!r}; known: {sorted(NETS)}")
  c.model = ml_collections.ConfigDict(dict(NETS[name], logit_scale=c.model.logit_scale))
  if c.model.family == "adapter" and "trunk_train" not in c:
    # The trunk is a generalist of its own CNN, trained like the base (on seen classes).
    c.trunk_train = ml_collections.ConfigDict(c.base.to_dict())


def _apply_setting(c: ml_collections.ConfigDict, item: str) -> None:
  """Applies one "key=value" sweep setting (net=NAME or tasks=MIN-MAX) to a config."""
  key, _, value = item.partition("=")
  if key == "net":
    _use_net(c, value)
  elif key == "tasks":
    lo, _, hi = value.partition("-")
    c.min_classes, c.max_classes = int(lo), int(hi or lo)
  else:
    raise ValueError(f"unknown corpus setting {key!r} in {item!r}; use net= or tasks=")


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
  # The subtask net: the "cnn2k" CNN (2,328 parameters with MiniLM's 384-d text space), the
  # setting of the room sweep with the largest room whose specialists are worth deploying
  # and whose main job fits 20 minutes here (docs/results/room_sweep.md). ``family``
  # picks the generated net (t2w_jax/zoo/family.py): "cnn", or "adapter" (a bottleneck
  # adapter on a frozen trunk; the "adapter" variant below).
  c.model = ml_collections.ConfigDict(dict(NETS["cnn2k"], logit_scale=10.0))
  # Tasks and splits.
  c.num_seen = 504  # + 48 + 48 = 600 nets
  c.num_unseen = 48
  c.num_heldout = 48
  c.min_classes = 2
  c.max_classes = 4
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
      steps=1000, batch_size=_RECIPE.batch_size, learning_rate=_RECIPE.learning_rate,
      eval_per_class=50, eval_every=50, patience=_RECIPE.patience,
      # The trainer's shape: "auto" and 0 (auto) are chosen per machine by a short timed
      # calibration at start-up, cached per machine (zoo/trainer_shape.py); a value given
      # here is used as it is. The corpus records the shape it was built with and keeps it
      # on resume.
      conv_impl="auto", nets_per_chunk=0))
  c.num_devices = 0  # devices the nets are spread over (0: all local devices)
  c.shard_size = 64  # nets per compiled call and per on-disk shard (rounded to the mesh)

  parts = [p for p in (arg or "").replace("adapter_tiny", "adapter,tiny").split(",") if p]
  for part in parts:
    if "=" in part:
      _apply_setting(c, part)
    elif part == "adapter":
      _use_net(c, "adapter16")
    elif part == "full":
      c.num_seen = FULL_NUM_SEEN
    elif part != "tiny":
      raise ValueError(f"unknown corpus config variant {part!r} in {arg!r}; use '', 'tiny', "
                       "'full', 'adapter', 'adapter_tiny', 'net=NAME' or 'tasks=MIN-MAX'")
  if "tiny" in parts:
    c.num_seen, c.num_unseen, c.num_heldout = 8, 4, 4
    if not any(p.startswith("tasks=") for p in parts):
      c.min_classes, c.max_classes = 2, 4
    if c.model.family == "cnn" and not any(p.startswith("net=") for p in parts):
      c.model.update(NETS["cnn2k"])
    elif c.model.family == "adapter":
      c.model.update(trunk_widths=(8, 16), trunk_strides=(1, 2), bottleneck=8)
      c.trunk_train.update(max_steps=300, eval_every=50, patience=2, lr_drops=1)
    c.val_per_class = 10
    c.base.update(max_steps=300, eval_every=50, patience=2, lr_drops=1)
    c.trainer.update(steps=60, eval_every=10, patience=3)
    c.trainer.eval_per_class = 20
    # Forced, not calibrated: tests and smoke runs build it many times.
    c.trainer.update(conv_impl="im2col", nets_per_chunk=2)
    c.shard_size = 4
    c.dataset_kwargs = ml_collections.ConfigDict(dict(train_per_class=60, test_per_class=20))
  if "dataset_kwargs" not in c:
    c.dataset_kwargs = ml_collections.ConfigDict()
  return c

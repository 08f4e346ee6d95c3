"""A generated net as one object: images in, logits or class names out.

``api.generate`` returns a ``Net`` (or, for several samples, a ``NetBatch`` of them); so do
``api.fuse``, ``api.enhance`` and ``api.few_shot``, and ``load_net`` reads one back from the
file ``Net.save`` writes::

    net = generate(gen, "red circle, blue star and green heart", rng=jax.random.PRNGKey(0))
    net.predict(images)          # ['blue star', ...]: one class name per image
    net(images)                  # (N, 3) logits, classes in net.class_names order
    net.save("net.npz"); load_net("net.npz")

Images the net is given (``prepare_images``):

* layout HWC, RGB: one image (H, W, 3) or a batch (N, H, W, 3); another channel count
  (grayscale, RGBA) or a channels-first array is refused, naming the fix;
* values uint8 in 0..255 (any integer type with values in 0..255 is taken as such) or
  float in [0, 1]; floats outside [0, 1] (e.g. 0..255 values stored as float) or not finite
  are refused;
* size: anything else than the net's ``image_size`` is resized to it (both sides, so the
  aspect ratio is not kept: crop first to keep it) by the rule the datasets were resized by
  when the corpus was trained (``data.types.resize_images``: box averaging for whole
  factors, antialiased bilinear otherwise); ``strict=True`` refuses other sizes instead.

One image in gives one result out (logits (K,), one class name); a batch gives a batch.
"""
import dataclasses
import json
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t2w_jax.errors import ConfigError, MissingError

# Written into every saved net's metadata; ``load_net`` checks it when present (files
# written before it existed carry none and still load).
FORMAT = "t2w_jax.net"
FORMAT_VERSION = 1
_META_KEYS = ("layout", "cnn", "classes", "image_size")


def prepare_images(images, image_size: int, *, strict: bool = False) -> tuple[np.ndarray, bool]:
  """Checks images and brings them to the net's size (the rules: this module's docstring).

  Args:
    images: one image (H, W, 3) or a batch (N, H, W, 3); uint8 (or integers in 0..255), or
      float in [0, 1]; numpy, JAX or anything ``np.asarray`` takes.
    image_size: the net's height and width.
    strict: refuse images of another size instead of resizing them.

  Returns:
    (batch, single): the (N, image_size, image_size, 3) batch, uint8 or float32, and
    whether one image was given.

  Raises:
    ConfigError (a ValueError): the wrong number of axes or channels, an unusable dtype,
      values out of range, or (``strict``) another size.
  """
  x = np.asarray(images)
  if x.ndim not in (3, 4):
    raise ConfigError(f"images must be one image (H, W, 3) or a batch (N, H, W, 3), got "
                      f"shape {x.shape}")
  single = x.ndim == 3
  if single:
    x = x[None]
  c = x.shape[-1]
  if c != 3:
    hint = {1: "grayscale: repeat it, np.repeat(images, 3, axis=-1)",
            4: "RGBA: drop the alpha channel, images[..., :3]"}.get(c, "")
    if not hint and x.shape[1] == 3:
      hint = "channels first? transpose to channels last (HWC)"
    raise ConfigError(f"images must have 3 channels last (RGB, HWC), got shape "
                      f"{tuple(np.asarray(images).shape)}" + (f" ({hint})" if hint else ""))
  if x.shape[1] == 0 or x.shape[2] == 0:
    raise ConfigError(f"images have no pixels: shape {tuple(np.asarray(images).shape)}")
  if x.dtype == np.uint8:
    pass
  elif np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
    if x.size and (x.min() < 0 or x.max() > 255):
      raise ConfigError(f"integer images must hold values in 0..255, got {x.dtype} values "
                        f"{x.min()}..{x.max()}")
    x = x.astype(np.uint8)
  elif np.issubdtype(x.dtype, np.floating):
    if x.size and not np.isfinite(x).all():
      raise ConfigError("images hold NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 1):
      hint = " (0..255 values? pass uint8 or divide by 255)" if x.max() > 1 else ""
      raise ConfigError(f"float images must hold values in [0, 1], got {x.dtype} values "
                        f"{x.min():.4g}..{x.max():.4g}{hint}")
    x = x.astype(np.float32)
  else:
    raise ConfigError(f"images must be uint8 (0..255) or float (0..1), got dtype {x.dtype}")
  if x.shape[1:3] != (image_size, image_size):
    if strict:
      raise ConfigError(f"images are {x.shape[1]}x{x.shape[2]}; this net takes "
                        f"{image_size}x{image_size} (strict=True refuses other sizes; "
                        "without it they are resized)")
    from t2w_jax.data.types import resize_images  # local: PIL only when resizing
    x = resize_images(x, image_size)
  return x, single


def jit_apply(module):
  """``module.apply({"params": p}, images, class_emb)`` as a jitted function of
  (p, images, class_emb). Nets made together share one, and with it their compiled
  programs (``api`` keeps one per generator)."""
  return jax.jit(lambda params, images, class_emb: module.apply({"params": params}, images,
                                                                class_emb))


@dataclasses.dataclass(frozen=True, eq=False)
class _TaskNets:
  """What a net and a batch of nets for one task hold (``Net`` documents the fields); the
  class names become a tuple, the embeddings float32 with one row per name, and the
  module's apply is compiled once unless given."""
  params: Any
  module: Any
  class_names: tuple[str, ...]
  class_emb: np.ndarray
  image_size: int
  info: dict = dataclasses.field(default_factory=dict, repr=False)
  apply_fn: Any = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    object.__setattr__(self, "class_names", tuple(self.class_names))
    object.__setattr__(self, "class_emb", np.asarray(self.class_emb, np.float32))
    if self.class_emb.ndim != 2 or self.class_emb.shape[0] != len(self.class_names):
      raise ConfigError(f"class_emb must be ({len(self.class_names)}, d), one row per class "
                        f"name, got {self.class_emb.shape}")
    if self.apply_fn is None:
      object.__setattr__(self, "apply_fn", jit_apply(self.module))


@dataclasses.dataclass(frozen=True, eq=False)
class Net(_TaskNets):
  """One generated net: its parameters, the module that runs them, and its task.

  Attributes:
    params: the net's parameters (a Flax ``params`` pytree).
    module: what runs them: ``module.apply({"params": params}, images, class_emb)``; a
      ``SubtaskCNN``, or for the adapter family a ``zoo.family.TrunkedNet`` (the frozen
      trunk composed with the generated adapter).
    class_names: the task's classes; logit i and ``predict``'s answers refer to them.
    class_emb: (K, d) their text embeddings, as the net's head compares them.
    image_size: the height and width the net was trained at.
    info: what ``save`` needs to rebuild the module elsewhere: ``cnn`` (the subtask net's
      settings), ``encoder`` and ``template`` (how the class embeddings were made).
  """
  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __repr__(self) -> str:
    size = sum(int(np.size(a)) for a in jax.tree.leaves(self.params))
    return (f"Net(classes={list(self.class_names)}, image_size={self.image_size}, "
            f"parameters={size:,})")

  def __call__(self, images, *, strict: bool = False) -> np.ndarray:
    """Logits of the images against the net's classes.

    Args:
      images: one image (H, W, 3) or a batch (N, H, W, 3), uint8 or float in [0, 1]; other
        sizes are resized to ``image_size`` (the rules: ``prepare_images``).
      strict: refuse images of another size instead of resizing them.

    Returns:
      (K,) logits for one image, (N, K) for a batch (float32, numpy).

    Raises:
      ConfigError (a ValueError): images the net cannot take (shape, channels, dtype,
        range; with ``strict``, size).
    """
    x, single = prepare_images(images, self.image_size, strict=strict)
    if x.shape[0] == 0:
      return np.zeros((0, self.num_classes), np.float32)
    logits = np.asarray(self.apply_fn(self.params, jnp.asarray(x),
                                      jnp.asarray(self.class_emb)))
    return logits[0] if single else logits

  def predict(self, images, *, strict: bool = False) -> str | list[str]:
    """The class name the net gives each image: a list for a batch, one str for one image.

    Args and Raises: as ``__call__``.
    """
    logits = self(images, strict=strict)
    best = np.argmax(logits, axis=-1)
    if logits.ndim == 1:
      return self.class_names[int(best)]
    return [self.class_names[int(i)] for i in best]

  def block_until_ready(self) -> "Net":
    """Waits for the parameters to be computed (``jax.block_until_ready(net)`` calls it)."""
    jax.block_until_ready(self.params)
    return self

  def save(self, path: str) -> None:
    """Writes the net as one standalone .npz (atomically: a temporary name, then renamed).

    The file holds the flat weights, their layout, the class names and embeddings, the
    image size, the subtask net's settings and, for the adapter family, the frozen trunk's
    parameters (``trunk/<param path>`` arrays); ``load_net`` reads it back.

    Args:
      path: the file to write (conventionally ending in .npz; written as given).

    Raises:
      ConfigError: path is a directory, or the net's info lacks the subtask net settings.
      MissingError: the directory to write in does not exist.
    """
    from flax import traverse_util  # local: saving is rare
    from t2w_jax import io as io_lib
    from t2w_jax.weights import ParamLayout
    io_lib.check_output_path(path)
    if "cnn" not in self.info:
      raise ConfigError("this net's info has no 'cnn' (the subtask net settings), so a file "
                        "could not be read back; build nets with generate() or load_net()")
    layout = ParamLayout.from_params(self.params)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "layout": layout.to_json(),
            "cnn": self.info["cnn"], "classes": list(self.class_names),
            "encoder": self.info.get("encoder"), "template": self.info.get("template"),
            "image_size": int(self.image_size)}
    trunk = {}
    if hasattr(self.module, "trunk_params"):
      trunk = {f"trunk/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(
          jax.device_get(self.module.trunk_params), sep="/").items()}
    io_lib.atomic_save_npz(path, weights=np.asarray(layout.flatten(self.params)),
                           class_emb=self.class_emb, meta=np.array(json.dumps(meta)), **trunk)


@dataclasses.dataclass(frozen=True, eq=False)
class NetBatch(_TaskNets):
  """Several nets for one task (``generate(..., num_samples=n)``): index, iterate, count.

  ``nets[i]`` is the i-th ``Net`` (negative indices count from the end), ``len(nets)`` their
  number, ``for net in nets`` each in turn. The nets share their module, class names and
  embeddings; ``params`` holds all of them with a leading axis.
  """
  def __len__(self) -> int:
    return int(jax.tree.leaves(self.params)[0].shape[0])

  def __getitem__(self, i: int) -> Net:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
      raise TypeError(f"nets are indexed by int, got {type(i).__name__}")
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"net {i} of a batch of {n}")
    i = int(i) % n
    return Net(jax.tree.map(lambda a: a[i], self.params), self.module, self.class_names,
               self.class_emb, self.image_size, self.info, self.apply_fn)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __repr__(self) -> str:
    return (f"NetBatch({len(self)} nets, classes={list(self.class_names)}, "
            f"image_size={self.image_size})")

  def block_until_ready(self) -> "NetBatch":
    """Waits for the parameters to be computed (``jax.block_until_ready(nets)`` calls it)."""
    jax.block_until_ready(self.params)
    return self


def _not_a_net(path: str, why: str) -> ConfigError:
  return ConfigError(f"{path} is not a saved net ({why}); expected an .npz written by "
                     "Net.save or launch/generate.py")


def load_net(path: str) -> Net:
  """Reads a net written by ``Net.save`` (or ``launch/generate.py``, ``few_shot.py``, ...).

  Args:
    path: the file.

  Returns:
    The ``Net``, equal to the one saved (parameters bit for bit).

  Raises:
    MissingError (a FileNotFoundError): no such file.
    ConfigError (a ValueError): a file that is not a saved net (not an .npz, an .npz of
      something else, damaged metadata, weights that do not fit their layout), in one line
      naming the file and what was expected.
  """
  from flax import traverse_util  # local: keeps importing this module light
  from t2w_jax.weights import ParamLayout
  from t2w_jax.zoo import family as family_lib
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MissingError(f"{path}: no such file (expected a net saved by Net.save or "
                       "launch/generate.py)")
  if os.path.isdir(path):
    raise _not_a_net(path, "a directory")
  if not zipfile.is_zipfile(path):
    raise _not_a_net(path, "not an .npz archive")
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # a damaged archive: numpy's and zipfile's messages vary
    raise _not_a_net(path, f"unreadable: {type(e).__name__}") from None
  with z:
    missing = [k for k in ("weights", "class_emb", "meta") if k not in z.files]
    if missing:
      raise _not_a_net(path, f"it lacks {', '.join(missing)}; it holds "
                       f"{', '.join(sorted(z.files)[:5]) or 'nothing'}")
    try:
      meta = json.loads(str(z["meta"]))
      weights, class_emb = np.asarray(z["weights"]), np.asarray(z["class_emb"])
      trunk_flat = {k[len("trunk/"):]: np.asarray(z[k]) for k in z.files
                    if k.startswith("trunk/")}
    except Exception as e:  # object arrays, bad JSON, truncated members
      raise _not_a_net(path, f"unreadable contents: {type(e).__name__}") from None
  if not isinstance(meta, dict):
    raise _not_a_net(path, "its metadata is not a JSON object")
  lacking = [k for k in _META_KEYS if k not in meta]
  if lacking:
    raise _not_a_net(path, f"its metadata lacks {', '.join(lacking)}")
  version = meta.get("version", FORMAT_VERSION)
  if (meta.get("format", FORMAT) != FORMAT or not isinstance(version, int)
      or version > FORMAT_VERSION):
    raise _not_a_net(path, f"format {meta.get('format')!r} version {version!r}; this code "
                     f"reads {FORMAT!r} up to version {FORMAT_VERSION}")
  try:
    layout = ParamLayout.from_json(meta["layout"])
    c = meta["cnn"]
    module = family_lib.build_subtask_net(c, int(c["embed_dim"]))
  except Exception as e:
    raise _not_a_net(path, f"bad layout or net settings: {type(e).__name__}: {e}") from None
  if not np.issubdtype(weights.dtype, np.floating) or not np.issubdtype(class_emb.dtype,
                                                                        np.floating):
    raise _not_a_net(path, f"weights {weights.dtype} and class embeddings {class_emb.dtype} "
                     "must be float")
  if weights.ndim != 1 or weights.shape[0] != layout.total:
    raise _not_a_net(path, f"{weights.shape} weights for a layout of {layout.total} values")
  names = meta["classes"]
  if class_emb.ndim != 2 or class_emb.shape[0] != len(names):
    raise _not_a_net(path, f"class embeddings {class_emb.shape} for {len(names)} classes")
  if family_lib.family_of(c) == "adapter":
    trunk = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in trunk_flat.items()},
                                         sep="/")
    module = family_lib.TrunkedNet(family_lib.build_trunk(c, int(c["embed_dim"])), trunk,
                                   module)
  info = {"cnn": c, "encoder": meta.get("encoder"), "template": meta.get("template")}
  return Net(layout.unflatten(jnp.asarray(weights)), module, names, class_emb,
             int(meta["image_size"]), info)

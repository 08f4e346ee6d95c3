"""The DiT's text condition for a batch of tasks, from their padded class embeddings."""
import jax.numpy as jnp

from t2w_jax.text import prior


def text_condition(class_emb, class_mask, temperature: float = 1.0, drop=None) -> dict:
  """Builds the DiT's ``text`` input.

  Args:
    class_emb: (B, K, d) class embeddings, padded.
    class_mask: (B, K) bool, True for real classes.
    temperature: prior softmax temperature.
    drop: optional (B,) bool, True where the text is replaced by the learned null condition
      (classifier-free guidance).

  Returns:
    dict with class_emb, class_mask, fused (B, d), log_prior (B, K), drop (B,).
  """
  class_emb = jnp.asarray(class_emb, jnp.float32)
  class_mask = jnp.asarray(class_mask, bool)
  if drop is None:
    drop = jnp.zeros(class_emb.shape[:1], bool)
  return {"class_emb": class_emb, "class_mask": class_mask,
          "fused": prior.fuse(class_emb, class_mask, temperature),
          "log_prior": prior.log_prior(class_emb, class_mask, temperature),
          "drop": jnp.asarray(drop, bool)}

"""t2w_jax: Text2Weight in JAX/Flax.

The public API, as the model card names it::

  import jax
  from t2w_jax import load, generate
  params = load("runs/default")                       # a trained generator
  nets = generate(params, "tulip, rose and bus", rng=jax.random.PRNGKey(0))

``parse_description(text, known=None)`` shows the class names a description is read as
(``generate`` reads it the same way).

``load`` and ``generate`` (and the rest of ``t2w_jax.api``) are imported on first use, so
that ``import t2w_jax`` does not import JAX: the launch scripts set up the host's devices
(``t2w_jax.platform``) before JAX is first imported.
"""

_API = ("load", "generate", "fuse", "save_net", "load_net", "subtask_net", "class_embeddings",
        "take")
_TEXT = ("parse_description",)
__all__ = list(_API + _TEXT)


def __getattr__(name):
  if name in _API:
    from t2w_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  if name in _TEXT:
    from t2w_jax.text import description  # pylint: disable=import-outside-toplevel
    return getattr(description, name)
  raise AttributeError(f"module 't2w_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_API + _TEXT))

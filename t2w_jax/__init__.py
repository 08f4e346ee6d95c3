"""t2w_jax: Text2Weight in JAX/Flax.

The public API, three calls from a trained run to predictions::

  import jax
  from t2w_jax import load, generate, load_net
  gen = load("runs/default")                                  # a trained generator
  net = generate(gen, "tulip, rose and bus", rng=jax.random.PRNGKey(0))
  net.predict(images)                                         # one class name per image
  net.save("net.npz"); load_net("net.npz")

and the applications ``generate_with_shots`` (the generator's net conditioned on a few
labelled images, ``t2w_jax.shots``), ``few_shot``, ``enhance`` and ``fuse``
(``t2w_jax.api``). ``parse_description(text, known=None)`` shows the class names a
description is read as (``generate`` reads it the same way).

These names are imported on first use, so that ``import t2w_jax`` does not import JAX: the
launch scripts set up the host's devices (``t2w_jax.platform``) before JAX is first imported.
"""

# name -> the module that defines it.
_API = {name: "t2w_jax.api" for name in (
    "load", "generate", "few_shot", "enhance", "fuse", "save_net", "subtask_net",
    "class_embeddings", "class_names", "take")}
_API.update({name: "t2w_jax.net" for name in ("Net", "NetBatch", "load_net")})
_API["generate_with_shots"] = "t2w_jax.shots"
_API["parse_description"] = "t2w_jax.text.description"
__all__ = list(_API)


def __getattr__(name):
  if name in _API:
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(_API[name]), name)
  raise AttributeError(f"module 't2w_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_API))

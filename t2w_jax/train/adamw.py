"""AdamW with global-norm clipping, computed in one pass over each parameter.

``clipped_adamw`` is ``optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(...))``
with the same state tree (a checkpoint of either restores into the other) and the same
arithmetic up to float rounding, but its update is one expression per parameter array
(clip, both moments, bias correction, decoupled weight decay, learning rate) where the
chain is several tree passes. The update is memory-bound (it reads and writes every
parameter and both moments); ``python launch/bench.py kernels`` times the two against
each other and ``python launch/bench.py profile`` shows the update's share of the step.
"""
import jax
import jax.numpy as jnp
import optax


def clipped_adamw(learning_rate: optax.Schedule, *, b1: float, b2: float,
                  weight_decay: float, max_norm: float, eps: float = 1e-8
                  ) -> optax.GradientTransformation:
  """AdamW after global-norm clipping, fused per parameter; see the module docstring.

  Args:
    learning_rate: a schedule (step -> learning rate).
    b1, b2, eps: Adam's decay rates and denominator constant.
    weight_decay: decoupled weight decay (applied to every parameter, as ``optax.adamw``
      without a mask).
    max_norm: gradients with a larger global norm are scaled down to it.

  Returns:
    An ``optax.GradientTransformation`` whose state is the chain's:
    ``(EmptyState(), (ScaleByAdamState, EmptyState(), ScaleByScheduleState))``.
  """
  reference = optax.chain(optax.clip_by_global_norm(max_norm),
                          optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                                      weight_decay=weight_decay))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("clipped_adamw needs the params (decoupled weight decay)")
    clip_state, (adam, decay_state, schedule) = state
    g_norm = optax.tree.norm(grads)
    clip = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
    count = optax.safe_increment(adam.count)
    c1 = 1.0 - b1 ** count
    c2 = 1.0 - b2 ** count
    lr = learning_rate(schedule.count)

    def one(g, m, v, p):
      g = g * clip.astype(g.dtype)
      m = (1.0 - b1) * g + b1 * m
      v = (1.0 - b2) * g * g + b2 * v
      u = (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps)
      return (-lr * (u + weight_decay * p)).astype(p.dtype), m, v

    treedef = jax.tree.structure(grads)
    out = [one(*leaves) for leaves in zip(jax.tree.leaves(grads), jax.tree.leaves(adam.mu),
                                          jax.tree.leaves(adam.nu), jax.tree.leaves(params))]
    updates, mu, nu = (jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(3))
    new_state = (clip_state, (optax.ScaleByAdamState(count=count, mu=mu, nu=nu), decay_state,
                              optax.ScaleByScheduleState(
                                  count=optax.safe_increment(schedule.count))))
    return updates, new_state

  return optax.GradientTransformation(reference.init, update)

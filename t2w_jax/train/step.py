"""The pure train step: diffusion loss + adversarial loss, a discriminator step, EMA.

One call of ``train_step(state, batch)``:

1. augments each corpus net with a random hidden-unit permutation (same function,
   different weights), tokenizes and normalises it: x0 (B, L, P);
2. draws t and noise, forms x_t, drops the text of a ``text_dropout`` fraction
   (classifier-free guidance), and optionally nudges x_t adversarially (FGSM on the
   diffusion loss, ``perturb_eps``);
3. updates the DiT on ``diffusion_weight * x0_loss + task_loss_weight * task_loss +
   adv_weight * softplus(-D(x0_pred))``: the task loss decodes the x0 prediction to
   subtask weights and takes their cross-entropy on images of the example's own task
   (``t2w_jax/task_loss.py``); the adversarial term is non-saturating and joins after
   ``adv_start`` steps;
4. updates the discriminator on real x0 against the (stopped) predictions;
5. updates the EMA parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t2w_jax import task_loss as task_loss_lib
from t2w_jax.diffusion import get_schedule, q_sample, x0_loss
from t2w_jax.text.condition import text_condition
from t2w_jax.generator import GeneratorSpec, make_denoiser
from t2w_jax.train.state import TrainState, build_disc, build_optimizers
from t2w_jax.weights import permute_flat


def disc_accuracy(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The discriminator's accuracy over all real and fake examples together.

  A real example is right when its logit is > 0, a fake one when its logit is < 0; the
  two halves count equally (both batches have the same size in the train step).

  Args:
    real_logits: (B,) logits on real corpus weights.
    fake_logits: (B,) logits on the generator's predictions.

  Returns:
    A scalar in [0, 1].
  """
  right = jnp.concatenate([jnp.ravel(real_logits) > 0, jnp.ravel(fake_logits) < 0])
  return jnp.mean(right.astype(jnp.float32))


def layer_token_weights(spec: GeneratorSpec) -> np.ndarray | None:
  """Per-token loss weights: None (uniform) or 1/sqrt(layer size), mean 1 over tokens."""
  how = spec.config["layer_loss_weights"]
  if how == "uniform":
    return None
  if how != "size":
    raise ValueError(f"unknown layer_loss_weights {how!r}; use 'uniform' or 'size'")
  tok = spec.tokenizer
  w = 1.0 / np.sqrt(np.asarray(tok.layer_sizes, np.float64))[tok.layer_ids]
  return (w / w.mean()).astype(np.float32)


def make_train_step(spec: GeneratorSpec, config):
  """Returns the pure ``train_step(state, batch, data) -> (state, metrics)``.

  ``batch`` holds ``weights`` (B, D) raw flat corpus rows, ``class_ids`` (B, K) dataset
  class ids, ``class_emb`` (B, K, d) and ``class_mask`` (B, K). ``data`` is the
  ``task_loss.TaskImages`` the task loss draws from (replicated; unused when
  ``task_loss_weight`` is 0).

  With ``fresh_tasks`` > 0, each step also draws that many new tasks from the seen
  classes (``task_loss.sample_tasks``), not only the corpus's seen tasks, and trains the
  prediction at t = T-1 from pure noise on their task loss: at the chain's start x_t holds
  no trace of x0, so these examples need no corpus net, and the one-step sampler's net is
  trained on every task the seen classes make. With ``fresh_chain``, each of those
  predictions (held fixed) is noised again to a random t and predicted once more, on the
  same task: every t is trained on the nets the model's own sampler passes through.

  The task loss weighs every timestep alike: each x0 prediction along the chain is a net
  the sampler may return (the one-step sampler returns the prediction at t = T-1), so no t
  may predict a net that fails its task. Examples whose text was dropped (classifier-free
  guidance) are left out of it: their prediction cannot know the task.
  """
  disc = build_disc(spec)
  tx, disc_tx = build_optimizers(config)
  tok, norms, layout = spec.tokenizer, spec.norms, spec.layout
  schedule = get_schedule(config.schedule, config.num_timesteps)
  lids, bids = jnp.asarray(tok.layer_ids), jnp.asarray(tok.block_ids)
  mask = jnp.asarray(tok.mask)
  layer_w = layer_token_weights(spec)
  layer_w = None if layer_w is None else jnp.asarray(layer_w)
  use_adv = config.adv_weight > 0
  use_task = config.task_loss_weight > 0
  fresh = int(config.fresh_tasks) if use_task else 0
  task_loss = task_loss_lib.make_task_loss(
      task_loss_lib.subtask_model(spec.cnn, spec.text_dim), layout, config.task_images)

  denoise = make_denoiser(spec)

  def critic(disc_params, tokens, fused):
    return disc.apply({"params": disc_params}, tokens, lids, bids, fused)

  def train_step(state: TrainState, batch, data=None):
    rng, k_perm, k_t, k_noise, k_drop, k_task, k_fresh = jax.random.split(state.rng, 7)
    flat = batch["weights"]
    if config.permute_aug:
      flat = permute_flat(k_perm, flat, layout)
    x0 = norms.normalize(tok.tokenize(flat))
    b = x0.shape[0]
    t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps)
    noise = jax.random.normal(k_noise, x0.shape) * mask
    x_t = q_sample(schedule, x0, t, noise)
    drop = jax.random.uniform(k_drop, (b,)) < config.text_dropout
    text = text_condition(batch["class_emb"], batch["class_mask"], config.prior_temperature,
                          drop)
    if config.perturb_eps > 0:
      # Adversarial weight perturbation: move x_t a step up the diffusion loss.
      g = jax.grad(lambda x: x0_loss(denoise(state.params, x, t, text), x0, mask))(x_t)
      x_t = jax.lax.stop_gradient(x_t + config.perturb_eps * jnp.sign(g) * mask)
    adv_scale = jnp.where(state.step >= config.adv_start, config.adv_weight, 0.0)
    if fresh:
      # Fresh tasks at the chain's start: x_T is pure noise whatever x0 is, so the
      # prediction there needs no corpus net, only the task's images.
      k_ft, k_fn, k_task = jax.random.split(k_fresh, 3)
      f_classes, f_mask, f_emb = task_loss_lib.sample_tasks(k_ft, data, fresh,
                                                            config.max_classes)
      f_x = jax.random.normal(k_fn, (fresh,) + x0.shape[1:]) * mask
      f_t = jnp.full((fresh,), schedule.num_timesteps - 1, jnp.int32)
      f_text = text_condition(f_emb, f_mask, config.prior_temperature,
                              jnp.zeros((fresh,), bool))
      if config.fresh_chain:
        # A key of its own (folded in), so the other draws stay what they were without it.
        k_ct, k_cn = jax.random.split(jax.random.fold_in(k_fresh, 1))
        c_t = jax.random.randint(k_ct, (fresh,), 0, schedule.num_timesteps)
        c_noise = jax.random.normal(k_cn, (fresh,) + x0.shape[1:]) * mask

    def loss_fn(params):
      pred = denoise(params, x_t, t, text)
      diff = x0_loss(pred, x0, mask, layer_w)
      total = config.diffusion_weight * diff
      task = jnp.zeros(())
      if use_task:
        nets = tok.detokenize(norms.denormalize(pred))
        classes, cmask, emb = batch["class_ids"], batch["class_mask"], batch["class_emb"]
        keep = ~drop
        if fresh:
          f_pred = denoise(params, f_x, f_t, f_text)
          f_preds = [f_pred]
          if config.fresh_chain:
            c_x = q_sample(schedule, jax.lax.stop_gradient(f_pred) * mask, c_t, c_noise)
            f_preds.append(denoise(params, c_x, c_t, f_text))
          for p in f_preds:
            nets = jnp.concatenate([nets, tok.detokenize(norms.denormalize(p))])
            classes = jnp.concatenate([classes, f_classes])
            cmask = jnp.concatenate([cmask, f_mask])
            emb = jnp.concatenate([emb, f_emb])
            keep = jnp.concatenate([keep, jnp.ones((fresh,), bool)])
        per_net = task_loss(nets, classes, cmask, emb, data, k_task)
        keep = keep.astype(per_net.dtype)
        task = jnp.sum(per_net * keep) / jnp.maximum(jnp.sum(keep), 1.0)
        total = total + config.task_loss_weight * task
      adv = jnp.zeros(())
      if use_adv:
        adv = jnp.mean(jax.nn.softplus(-critic(state.disc_params, pred * mask,
                                                text["fused"])))
        total = total + adv_scale * adv
      return total, (diff, task, adv, pred)

    (loss, (diff, task, adv, pred)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p,
                       state.ema_params, params)
    metrics = {"loss": loss, "diffusion_loss": diff, "task_loss": task, "adv_loss": adv,
               "grad_norm": optax.global_norm(grads)}

    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if use_adv:
      fake = jax.lax.stop_gradient(pred) * mask

      def disc_loss_fn(dp):
        real_logits = critic(dp, x0, text["fused"])
        fake_logits = critic(dp, fake, text["fused"])
        loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
        return loss, disc_accuracy(real_logits, fake_logits)

      (d_loss, d_acc), d_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(disc_params)
      d_updates, disc_opt_state = disc_tx.update(d_grads, disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)
      metrics.update(disc_loss=d_loss, disc_acc=d_acc)

    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state, disc_params=disc_params,
                              disc_opt_state=disc_opt_state, rng=rng)
    return new_state, metrics

  return train_step

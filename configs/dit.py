"""Generator (prior-attention DiT) config, with size variants.

Launch (from the repository root; the corpus must exist in WORKDIR/corpus or at
--config.corpus_dir):

  python launch/train.py --config=configs/dit.py --workdir=runs/default            # small (CPU)
  python launch/train.py --config=configs/dit.py:tiny --workdir=/tmp/t2w_tiny      # tests
  python launch/train.py --config=configs/dit.py:base --workdir=runs/c100         # one GPU
  python launch/train.py --config=configs/dit.py:large --workdir=/mnt/shared/run \\
      --config.mesh.data=-1 --config.mesh.model=4                                   # TPU pod

``get_config(arg)``: "small" (default; minutes on a 2-core CPU), "tiny", "base" (the
PyTorch T2W's size: width 1024, 6 layers, 8 heads, 576-value tokens), "large".
On several hosts, launch the same command on every host, with a --workdir they share and
the multi-process settings where the cluster does not give them (docs/scaling_out.md);
``batch_size`` is the global batch.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "small"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.corpus_dir = ml_collections.config_dict.placeholder(str)  # default: WORKDIR/corpus
  c.seen_limit = 0  # learn from the first N seen nets only (scaling curve); 0: all
  # Tokenizer: blocks of one size that never cross parameters.
  c.block_size = 512
  c.token_group = "param"
  # "element": tokens are residuals from the corpus's mean net (zero output = mean net);
  # "layer": one mean per layer, as in G.pt.
  c.norm_center = "element"
  c.max_classes = 32  # class tokens per task (padded)
  c.prior_temperature = 1.0
  # DiT and its ablation switches.
  c.model = ml_collections.ConfigDict(dict(
      width=64, depth=3, num_heads=4, mlp_ratio=4.0,
      cond_adaln=True, cross_attention=True, prior_bias=True, text_as_token=False,
      # A deterministic text head added to the output (models/text_head.py): x0 =
      # head(text) + transformer(x_t, t, text). Hidden width; 0: none.
      text_head=0, text_head_depth=2,
      # How the blocks get their adaLN shifts, scales and gates: "block" (a Dense per
      # block, as in DiT) or "single" (one shared Dense plus per-block offsets, as in
      # PixArt-alpha: depth-fold fewer modulation parameters).
      adaln="block",
      # How weight tokens are projected to and from the width: "per_token" (a separate
      # affine map per token position, as in G.pt), "shared" (one map for every token
      # plus a per-token bias: far fewer parameters when tokens are many and wide) or
      # "low_rank" (the shared map plus a per-token correction of rank token_proj_rank).
      token_proj="per_token", token_proj_rank=8,
      dtype="float32"))
  # Discriminator on predicted x0 (the adversarial loss, when adv_weight > 0).
  c.disc = ml_collections.ConfigDict(dict(width=64, depth=1, num_heads=4, mlp_ratio=2.0,
                                          text_conditioned=True, learning_rate=1e-4))
  # Off by default: with the task loss on, the adversarial term changed nothing the
  # ablation could measure (docs/results.md, "Ablations"); it stays available and ablated (the
  # discriminator is updated only when adv_weight > 0).
  c.adv_weight = 0.0
  c.adv_start = 200  # steps of pure diffusion before the adversarial term joins
  c.perturb_eps = 0.0  # adversarial (FGSM) perturbation of x_t in normalised units; 0 = off
  # Hidden-unit permutations as data augmentation. Off by default: every corpus net is
  # fine-tuned from one base, so the corpus is aligned; permuted copies are far from the
  # mean net (normalised residuals ~50x larger, measured) and make the target multimodal.
  # It stays available (and ablated) for corpora of independently initialised nets.
  c.permute_aug = False
  # The functional (task) loss: the x0 prediction decoded to a subtask net, its
  # cross-entropy on `task_images` images of the example's own seen task (training rows
  # only; t2w_jax/task_loss.py). 0 turns it off; diffusion_weight 0 with it on is the
  # "task loss only" ablation.
  c.task_loss_weight = 5.0
  c.task_images = 16
  # New tasks per step drawn from the seen classes, trained at t = T-1 (pure noise) on the
  # task loss alone (train/step.py).
  c.fresh_tasks = 32
  # Fresh tasks along the chain too: each fresh task's prediction from pure noise is
  # noised again to a random t and predicted once more, and that prediction is scored on
  # the task as well (one more DiT pass on the fresh tasks): the denoiser is then trained
  # at every t on the nets its own sampler visits, which multi-step sampling and
  # enhancement start from. On by the ablation "fresh_chain" (docs/results.md, "Ablations").
  c.fresh_chain = True
  c.diffusion_weight = 1.0
  # Diffusion. "x0": the DiT predicts x0 directly, as G.pt and the PyTorch T2W do; "v":
  # x0 = sqrt(abar) x_t - sqrt(1 - abar) DiT(x_t) (generator.py's make_denoiser). "x0" stays
  # the default because a lower diffusion loss under "v" did not give better nets: the loss
  # is not the measure, the nets' accuracy is (figures: docs/results/).
  c.parameterization = "x0"
  c.schedule = "cosine"
  c.num_timesteps = 1000
  c.text_dropout = 0.1  # classifier-free guidance
  c.layer_loss_weights = "uniform"  # or "size": weight layers by 1/sqrt(#values)
  # Optimisation.
  c.batch_size = 64
  c.num_steps = 1500
  c.learning_rate = 1e-3
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.grad_clip = 1.0
  c.ema_decay = 0.995
  # Mesh: data x model; -1 means "all remaining devices".
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
  # Bookkeeping.
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  # Sampling defaults used by generate() and the evaluators (generator.resolve_sampling).
  # One DDIM step from x_T is the DiT's own estimate of E[x0 | text]; later steps add
  # sampled detail that behaves like noise in weight space, so one step is the default.
  # The sampler ablation measures 1-100 steps (figures: docs/results/default_eval_table.md).
  c.sampler = "ddim"
  c.sample_steps = 1
  c.guidance = 1.0
  c.sample_temperature = 1.0  # scale of the starting noise (docs/results.md: the sampler study)

  if arg == "tiny":
    c.block_size = 64
    c.model.update(width=32, depth=1, num_heads=2, mlp_ratio=2.0)
    c.disc.update(width=16, depth=1, num_heads=2)
    c.batch_size = 8
    c.num_steps = 30
    c.adv_start = 10
    c.warmup_steps = 5
    c.log_every = 10
    c.checkpoint_every = 10
    c.max_classes = 6
    c.fresh_tasks = 4
    c.num_timesteps = 100
    c.sample_steps = 10
  elif arg == "small":
    pass
  elif arg == "base":
    c.block_size = 576
    # adaLN-single: per-block modulations would be over a quarter of the parameters at
    # this width; at the default size it cost no accuracy the ablation could measure.
    # The low-rank token projection: a map per token position would be a quarter of the
    # parameters at this size. Its rank is a quarter of the maps' full rank (576), as rank
    # 16 of 64 at the default size, where two seeds of the paired ablation measured no
    # cost in accuracy.
    c.model.update(width=1024, depth=6, num_heads=8, dtype="bfloat16", adaln="single",
                   token_proj="low_rank", token_proj_rank=144)
    c.disc.update(width=256, depth=2, num_heads=4)
    c.batch_size = 256
    c.num_steps = 100_000
    c.learning_rate = 2e-4
    c.warmup_steps = 2000
    c.checkpoint_every = 5000
    c.log_every = 200
  elif arg == "large":
    c.block_size = 576
    c.model.update(width=2048, depth=24, num_heads=16, dtype="bfloat16", adaln="single",
                   token_proj="low_rank", token_proj_rank=144)
    c.disc.update(width=512, depth=4, num_heads=8)
    c.batch_size = 2048
    c.num_steps = 200_000
    c.learning_rate = 1e-4
    c.warmup_steps = 5000
    c.checkpoint_every = 5000
    c.log_every = 200
    c.mesh.model = 4
  else:
    raise ValueError(f"unknown dit config variant {arg!r}; use tiny, small, base or large")
  return c

"""Ablations of the generator: each variant trained with the same budget on the same corpus
and evaluated on the same tasks as the full model.

  python launch/ablate.py --config=configs/ablations.py --workdir=runs/default
  python launch/ablate.py --config=configs/ablations.py --workdir=runs/default \\
      --config.num_steps=800 --config.variants=full,with_adv

Reads WORKDIR/corpus; trains into WORKDIR/ablations/<variant>; writes
WORKDIR/ablations/table.md and results.json.
"""
import ml_collections

# Overrides of configs/dit.py per variant.
VARIANTS = {
    "full": {},
    # The losses: the PyTorch T2W's diffusion loss alone, and the task loss alone (the DiT
    # as a hypernetwork fed noise; the plain MLP hypernetwork is the evaluator "hypernet").
    "diffusion_only": {"task_loss_weight": 0.0},
    "no_fresh_tasks": {"fresh_tasks": 0},
    "task_loss_only": {"diffusion_weight": 0.0},
    "with_adv": {"adv_weight": 0.01},  # the default is off; see configs/dit.py
    "with_perm_aug": {"permute_aug": True},  # the default is off; see configs/dit.py
    "no_prior_attention": {"model.cross_attention": False, "model.prior_bias": False},
    "no_prior_bias": {"model.prior_bias": False},
    # The PyTorch T2W's conditioning: fused text as one extra token, nothing else.
    "token_concat": {"model.text_as_token": True, "model.cond_adaln": False,
                     "model.cross_attention": False, "model.prior_bias": False},
    # v-prediction: x0 = sqrt(abar) x_t - sqrt(1 - abar) DiT(x_t), the identity at small t
    # for a zero DiT (generator.make_denoiser); for multi-step sampling and enhancement.
    "v_param": {"parameterization": "v"},
    "no_fresh_chain": {"fresh_chain": False},
    # The DiT's products in bfloat16 (float32 accumulation; models.layers.einsum): the
    # accuracy side of the bf16 speed-up measured by launch/bench.py pytorch --dtype.
    "bf16": {"model.dtype": "bfloat16"},
    # Twice the fresh tasks per step (the plain hypernetwork's training signal, which the
    # generator gets on top of the corpus).
    "fresh_64": {"fresh_tasks": 64},
    # The residual parameterisation: x0 = text head(text) + DiT (models/text_head.py).
    "text_head": {"model.text_head": 512},
    # One shared adaLN modulation with per-block offsets (PixArt-alpha's adaLN-single).
    "adaln_single": {"model.adaln": "single"},
    # One token projection in and one out shared by every token, plus per-token biases,
    # instead of a separate map per token position.
    "shared_token_proj": {"model.token_proj": "shared"},
    # The shared map plus a per-token correction of rank 4, 8 or 16 (of at most 64 at the
    # default width).
    "low_rank_token_proj_4": {"model.token_proj": "low_rank", "model.token_proj_rank": 4},
    "low_rank_token_proj_8": {"model.token_proj": "low_rank", "model.token_proj_rank": 8},
    "low_rank_token_proj_16": {"model.token_proj": "low_rank", "model.token_proj_rank": 16},
    # Training compute: twice the steps (the plain hypernetwork trains 8,000 cheaper ones),
    # and twice the learning rate (the hypernetwork's).
    "steps_3000": {"num_steps": 3000, "checkpoint_every": 3000},
    "lr_2e-3": {"learning_rate": 2e-3},
    "dit_128x4_chain": {"model.width": 128, "model.depth": 4},
    # The scaling curve (docs/results.md, "Scaling"): fewer corpus nets, and a wider, deeper DiT.
    "corpus_126": {"seen_limit": 126},
    "corpus_252": {"seen_limit": 252},
    "corpus_504": {"seen_limit": 504},
    "corpus_1000": {"seen_limit": 1000},
    "corpus_3000": {"seen_limit": 3000},
    "dit_128x4": {"model.width": 128, "model.depth": 4, "fresh_chain": False},
    "dit_128x4_chain_corpus_1000": {"model.width": 128, "model.depth": 4, "seen_limit": 1000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dit_variant = "small"      # configs/dit.py variant every ablation starts from
  c.num_steps = 1500           # the shared training budget (the default's)
  # Devices of the data axis each variant trains on (0: configs/dit.py's mesh, every device).
  c.data_devices = 0
  c.variants = ",".join(VARIANTS)
  c.splits = ("unseen", "heldout")
  c.num_samples = 2            # generated nets per task
  c.steps = 0                  # DDIM steps when sampling (0: the generator config's)
  c.max_tasks = 48             # tasks per split
  # Training seeds (initial draw and batch order), comma-separated: each variant trains
  # once per seed and the table averages each task's accuracy over the seeds.
  c.seeds = "0"
  if arg == "tiny":
    c.dit_variant = "tiny"
    c.num_steps = 10
    c.variants = "full,with_adv,token_concat"
    c.num_samples = 1
    c.max_tasks = 2
  elif arg:
    raise ValueError(f"unknown ablation config variant {arg!r}; use '' or 'tiny'")
  return c

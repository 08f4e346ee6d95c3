"""Benchmark of the DiT: training and denoising at the PyTorch T2W's CIFAR-100 size, and
generation at the default config.

``python launch/bench.py dit`` measures:

* **train samples/s** at the PyTorch T2W's CIFAR-100 size (DiT width 1024, 6 layers, 8
  heads, 34 tokens of 576 values, batch 32; text dim 512, up to 32 classes; adaLN text
  conditioning, cross-attention and the prior bias on). This is the **DiT-only step**:
  random tokens -> q_sample -> x0 loss -> AdamW (the training optimiser of
  ``train.state.build_optimizers``), jitted with donated buffers. The full ``train_step``
  needs a corpus spec and adds the discriminator, permutation augmentation and EMA; none of
  those is timed here. With several local devices (``--host_devices`` on a CPU) the batch is
  split over them.
* **the latency of one denoising call** (one DiT forward) at batch 1, same size.
* **model FLOP utilisation**: ``models.model_flops_per_example`` x samples/s over the
  GFLOP/s of a large matmul measured in the same run (bfloat16 when the DiT runs in
  bfloat16). XLA's cost analysis of the compiled step is reported beside it as a check.
* **one net at the default config** (configs/dit.py "small", the default corpus's subtask
  net, the config's default sampler): the sampler alone, and ``api.generate`` from text
  to weights with the MiniLM text encoding included; random (untrained) DiT parameters.
* **generation time** of 1 and of 64 nets with DDIM-50 at the small config (the 18.7 K
  SubtaskCNN ``CNN19K``: 41 tokens, D=18704): the jitted sampler of ``api.sample_flat`` on
  random parameters, random class embeddings and unit normalisation; text encoding is not
  included.

No PyTorch figure is printed here: ``python launch/bench.py pytorch --t2w_repo PATH``
(``pytorch_bench.py``) times the PyTorch T2W beside these figures in the same run.
"""
import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks import harness
from t2w_jax import api
from t2w_jax import generator as generator_lib
from t2w_jax.diffusion import get_schedule, q_sample, x0_loss
from t2w_jax.errors import ConfigError
from t2w_jax.models import DiT, layers, model_flops_per_example, param_count, unbox
from t2w_jax.text.condition import text_condition
from t2w_jax.train import state as state_lib
from t2w_jax.weights import BlockTokenizer, LayerNorms, ParamLayout
from t2w_jax.zoo import family as family_lib
from t2w_jax.zoo.cnn import init_params

@dataclasses.dataclass(frozen=True)
class DiTSize:
  """The DiT and batch timed for training and denoising."""
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  block_size: int
  num_tokens: int
  batch_size: int
  text_dim: int
  max_classes: int
  # "prior": our default conditioning (adaLN on the fused text, cross-attention to the class
  # tokens with the prior bias); "token": the PyTorch T2W's (the fused text as one extra
  # token, adaLN on the timestep only, no cross-attention), for equal-work comparisons.
  conditioning: str = "prior"
  # How the blocks get their adaLN modulation (``DiT.adaln``): "block" or "single".
  adaln: str = "block"
  # How tokens are projected to and from the width (``DiT.token_proj``, its rank).
  token_proj: str = "per_token"
  token_proj_rank: int = layers.TOKEN_PROJ_RANK

  def dit_switches(self) -> dict:
    """The DiT's conditioning switches for ``conditioning``, its ``adaln`` and its
    ``token_proj``."""
    if self.conditioning not in ("prior", "token"):
      raise ValueError(f"conditioning must be 'prior' or 'token', got {self.conditioning!r}")
    prior = self.conditioning == "prior"
    return dict(cond_adaln=prior, cross_attention=prior, prior_bias=prior,
                text_as_token=not prior, adaln=self.adaln, token_proj=self.token_proj,
                token_proj_rank=self.token_proj_rank)

  def flops_config(self) -> dict:
    """What ``model_flops_per_example`` reads (the conditioning as timed)."""
    fields = dataclasses.asdict(self)
    fields.pop("conditioning")
    return dict(fields, **self.dit_switches())


# Our DiT at that size is configs/dit.py "base": adaLN-single, low-rank token projections.
CIFAR_SIZE = DiTSize(width=1024, depth=6, num_heads=8, mlp_ratio=4.0, block_size=576,
                     num_tokens=34, batch_size=32, text_dim=512, max_classes=32,
                     adaln="single", token_proj="low_rank", token_proj_rank=144)
QUICK_SIZE = DiTSize(width=32, depth=1, num_heads=2, mlp_ratio=2.0, block_size=16,
                     num_tokens=6, batch_size=4, text_dim=16, max_classes=4,
                     token_proj="low_rank", token_proj_rank=2)
# The DDIM-50 figures generate the corpus's SubtaskCNN of before the generalist ("cnn19k",
# MiniLM text space), kept so that those figures stay comparable from run to run; the
# default net is timed by ``bench_default_generation`` with the net the caller passes.
CNN19K = dict(widths=(8, 16, 32), strides=(1, 2, 2), logit_scale=10.0, embed_dim=384)
QUICK_CNN = dict(widths=(4, 8), strides=(1, 2), logit_scale=10.0, embed_dim=16)
# The target for one net, text to weights, at the default config on the project's 2-core
# CPU, in seconds.
ONE_NET_TARGET_SECONDS = 0.05
# The target for the CIFAR-size train step on an accelerator: its bf16 model FLOP
# utilisation at the batch that fills the chip (``batch_sweep``).
MFU_TARGET = 0.40
DEFAULT_TEXT = "apple, bus and tulip"  # a default-sized task (2-4 classes)


def build_dit(size: DiTSize, dtype) -> DiT:
  """The timed DiT; every token is its own layer (the embedding tables are tiny anyway)."""
  return DiT(width=size.width, depth=size.depth, num_heads=size.num_heads,
             mlp_ratio=size.mlp_ratio, block_size=size.block_size, num_layers=size.num_tokens,
             max_blocks=1, text_dim=size.text_dim, dtype=jnp.dtype(dtype),
             **size.dit_switches())


def random_text(rng: np.random.Generator, batch: int, max_classes: int, dim: int):
  """(B, K, d) unit class embeddings and (B, K) masks with 2..K real classes per task."""
  emb = rng.standard_normal((batch, max_classes, dim)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  k = rng.integers(min(2, max_classes), max_classes + 1, batch)
  return emb, np.arange(max_classes)[None, :] < k[:, None]


def random_params(module, seed: int, *args, scale: float = 0.02):
  """Random "untrained" params of ``module``: N(0, scale^2) in every entry, drawn in numpy.

  Only the shapes come from ``module.init`` (through ``jax.eval_shape``): compiling a real
  init (hundreds of threefry draws) takes longer on a busy CPU than everything it is for,
  and the timings do not depend on the values. Every entry is non-zero, so adaLN-Zero's
  gates are open as in a trained model.
  """
  shapes = unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(scale * rng.standard_normal(x.shape, dtype=np.float32)), shapes)


def init_dit_params(dit: DiT, size: DiTSize, seed: int):
  """Random plain-array params of the timed DiT."""
  x = jnp.zeros((1, size.num_tokens, size.block_size))
  emb, mask = random_text(np.random.default_rng(0), 1, size.max_classes, size.text_dim)
  text = text_condition(emb, mask)
  ids = jnp.arange(size.num_tokens)
  return random_params(dit, seed, x, jnp.zeros((1,), jnp.int32), ids, jnp.zeros_like(ids), text)


def make_dit_train_step(dit: DiT, size: DiTSize, config):
  """The DiT-only train step: ``(params, opt_state, batch, rng) -> (params, opt_state, loss)``.

  Random t and noise, text dropout (classifier-free guidance), x0 loss, and the AdamW
  (+ warmup/cosine, clipping) of ``train.state.build_optimizers(config)``.
  """
  tx, _ = state_lib.build_optimizers(config)
  schedule = get_schedule(config.schedule, config.num_timesteps)
  lids = jnp.arange(size.num_tokens)
  bids = jnp.zeros_like(lids)
  mask = jnp.ones((size.num_tokens, size.block_size), bool)

  def train_step(params, opt_state, batch, rng):
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    x0 = batch["x0"]
    b = x0.shape[0]
    t = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps)
    x_t = q_sample(schedule, x0, t, jax.random.normal(k_noise, x0.shape))
    drop = jax.random.uniform(k_drop, (b,)) < config.text_dropout
    text = text_condition(batch["class_emb"], batch["class_mask"], 1.0, drop)

    def loss_fn(p):
      return x0_loss(dit.apply({"params": p}, x_t, t, lids, bids, text), x0, mask)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return tx, train_step


def _batch_mesh(batch: int):
  """A 1-D ('data',) mesh over the local devices when they split the batch, else None."""
  devices = jax.local_devices()
  if len(devices) > 1 and batch % len(devices) == 0:
    return Mesh(np.asarray(devices), ("data",))
  return None


def train_inputs(size: DiTSize, config, dtype: str, seed: int = 0):
  """The timed train step and what it is fed: (step_fn, params, opt_state, host batch)."""
  dit = build_dit(size, dtype)
  params = init_dit_params(dit, size, seed)
  tx, step_fn = make_dit_train_step(dit, size, config)
  rng = np.random.default_rng(seed)
  emb, mask = random_text(rng, size.batch_size, size.max_classes, size.text_dim)
  batch = {"x0": rng.standard_normal((size.batch_size, size.num_tokens, size.block_size),
                                     dtype=np.float32),
           "class_emb": emb, "class_mask": mask}
  return step_fn, params, tx.init(params), batch


def bench_train(size: DiTSize, config, dtype: str, repeats: int, train_steps: int,
                seed: int = 0) -> dict:
  """Times the DiT-only train step; returns samples/s, FLOPs and compile time."""
  step_fn, params, opt_state, batch = train_inputs(size, config, dtype, seed)
  mesh = _batch_mesh(size.batch_size)
  if mesh is not None:
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params, opt_state = jax.device_put((params, opt_state), rep)
    batch = jax.device_put(batch, split)
  else:
    batch = jax.device_put(batch)
  step = jax.jit(step_fn, donate_argnums=(0, 1))
  key = jax.random.PRNGKey(seed)
  start = time.perf_counter()
  compiled = step.lower(params, opt_state, batch, key).compile()
  compile_s = time.perf_counter() - start
  xla = harness.xla_flops(compiled)

  def run_steps(params, opt_state, n, offset):
    for i in range(n):
      params, opt_state, loss = step(params, opt_state, batch,
                                     jax.random.fold_in(key, offset + i))
    jax.block_until_ready((params, opt_state, loss))
    return params, opt_state, float(loss)

  params, opt_state, _ = run_steps(params, opt_state, 1, 0)  # warm-up run
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    params, opt_state, loss = run_steps(params, opt_state, train_steps, 1 + r * train_steps)
    times.append(time.perf_counter() - start)
  sec = harness.median(times) / train_steps
  return {"dtype": dtype, "batch_size": size.batch_size, "devices": 1 if mesh is None
          else mesh.size, "params": param_count(params), "compile_seconds": compile_s,
          "steps_per_repeat": train_steps, "seconds": times, "seconds_per_step": sec,
          "samples_per_s": size.batch_size / sec, "final_loss": loss,
          "xla_flops_per_example": xla / size.batch_size, "_params": params}


def denoise_inputs(size: DiTSize, dtype: str, seed: int = 0, params=None):
  """One batch-1 DiT forward (one denoising call) and its arguments: ``(call, args)``,
  ``call(*args)`` to be jitted; random params of the seed unless ``params`` are given,
  held as sampling holds them (``generator.inference_params``)."""
  dit = build_dit(size, dtype)
  if params is None:
    params = init_dit_params(dit, size, seed)
  params = generator_lib.inference_params(params, dtype)
  emb, mask = random_text(np.random.default_rng(seed + 1), 1, size.max_classes, size.text_dim)
  x_t = jax.random.normal(jax.random.PRNGKey(seed), (1, size.num_tokens, size.block_size))
  t = jnp.full((1,), 500, jnp.int32)
  ids = jnp.arange(size.num_tokens)

  def call(p, x, t, c):
    return dit.apply({"params": p}, x, t, ids, jnp.zeros_like(ids), c)
  return call, (params, x_t, t, text_condition(emb, mask))


def bench_denoise(size: DiTSize, params, dtype: str, repeats: int, seed: int = 0) -> dict:
  """Latency of one DiT forward (one denoising call) at batch 1 on one device."""
  call, args = denoise_inputs(size, dtype, seed, jax.device_put(params, jax.local_devices()[0]))
  times = harness.time_calls(jax.jit(call), *args, repeats=repeats, warmup=1)
  return {"batch_size": 1, "seconds": times, "seconds_median": harness.median(times)}


def small_generator(config: ml_collections.ConfigDict, cnn: dict, image_size: int = 16,
                    seed: int = 0) -> api.Generator:
  """A Generator of the given DiT config for the given SubtaskCNN, with random params.

  The tokenizer comes from the CNN's parameter layout; the normalisation is the identity
  (zero means, unit stds), since no corpus is involved.
  """
  model = family_lib.build_subtask_net(cnn, int(cnn["embed_dim"]))
  # Shapes only: the layout needs no parameter values.
  layout = ParamLayout.from_params(
      jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(seed), image_size)))
  tok = BlockTokenizer(layout, config.block_size, group=config.token_group)
  norms = LayerNorms(tok, (0.0,) * tok.num_layers, (1.0,) * tok.num_layers)
  spec = generator_lib.GeneratorSpec(
      config=config.to_dict(), tokenizer=tok, norms=norms, encoder="minilm",
      template="a photo of a {}",
      cnn=dict({k: list(v) if isinstance(v, (tuple, list)) else v for k, v in cnn.items()},
               logit_scale=float(cnn["logit_scale"]), embed_dim=int(cnn["embed_dim"])),
      image_size=image_size, corpus_fingerprint=layout.fingerprint())
  x, t, text = generator_lib.dummy_inputs(spec)
  params = random_params(generator_lib.build_dit(spec), seed, x, t, jnp.asarray(tok.layer_ids),
                         jnp.asarray(tok.block_ids), text)
  return api.Generator(spec, params)


def bench_generate(gen: api.Generator, batch_sizes, steps: int, repeats: int,
                   seed: int = 0) -> dict:
  """Seconds to generate each batch of nets with DDIM-``steps`` (first call: + compile)."""
  cfg = gen.spec.config
  k, d = cfg["max_classes"], gen.spec.text_dim
  out = {"sampler": "ddim", "steps": steps, "guidance": float(cfg["guidance"]),
         "num_tokens": gen.spec.tokenizer.num_tokens, "D": gen.spec.layout.total,
         "block_size": gen.spec.tokenizer.block_size, "params": param_count(gen.params),
         "runs": []}
  for b in batch_sizes:
    emb, mask = random_text(np.random.default_rng(seed + b), b, k, d)

    def sample(emb=emb, mask=mask):
      return api.sample_flat(gen, emb, mask, rng=jax.random.PRNGKey(seed), steps=steps,
                             sampler="ddim", guidance=float(cfg["guidance"]))

    start = time.perf_counter()
    flat = jax.block_until_ready(sample())
    first = time.perf_counter() - start
    if flat.shape != (b, gen.spec.layout.total):
      raise AssertionError(f"sampler gave {flat.shape}, expected {(b, gen.spec.layout.total)}")
    times = harness.time_calls(sample, repeats=repeats, warmup=0)
    sec = harness.median(times)
    out["runs"].append({"nets": b, "first_call_seconds": first, "seconds": times,
                        "seconds_median": sec, "nets_per_s": b / sec})
  return out


def bench_default_generation(config: ml_collections.ConfigDict, cnn: dict, *,
                             image_size: int, repeats: int, seed: int = 0,
                             encode_text: bool = True, text: str = DEFAULT_TEXT) -> dict:
  """Seconds for one net at the config's default sampler, after a warm-up call.

  Two figures: the jitted sampler alone (random class embeddings), and ``api.generate``
  from text to weights, which adds the text encoder (MiniLM) and the unflattening.

  Args:
    config: the DiT config; its ``sampler``, ``sample_steps`` and ``guidance`` are the
      defaults ``generate`` uses, and the ones timed.
    cnn: the subtask net (the default corpus's ``model`` settings plus ``embed_dim``).
    image_size: the corpus's image size (it fixes the net's parameter layout).
    repeats: timed calls of each (the median is reported).
    seed: parameter, embedding and noise seed.
    encode_text: also time ``api.generate`` (needs the MiniLM package and a 384-d net).
    text: the task description of the end-to-end call.

  Returns:
    dict with the sampling settings, D, tokens, params, "sampler_seconds" (list) and
    "sampler_seconds_median", "generate_seconds"/"generate_seconds_median" (None when
    not timed) and "generate_skipped" (why not, or "").
  """
  gen = small_generator(config, cnn, image_size=image_size, seed=seed)
  s = generator_lib.resolve_sampling(gen.spec.config)
  emb, mask = random_text(np.random.default_rng(seed), 1, int(gen.spec.config["max_classes"]),
                          gen.spec.text_dim)
  key = jax.random.PRNGKey(seed)
  sampler_times = harness.time_calls(lambda: api.sample_flat(gen, emb, mask, rng=key),
                                   repeats=repeats)
  out = {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
         "num_tokens": gen.spec.tokenizer.num_tokens, "D": gen.spec.layout.total,
         "block_size": gen.spec.tokenizer.block_size, "params": param_count(gen.params),
         "width": int(gen.spec.config["model"]["width"]),
         "depth": int(gen.spec.config["model"]["depth"]), "text": text,
         "sampler_seconds": sampler_times,
         "sampler_seconds_median": harness.median(sampler_times),
         "generate_seconds": None, "generate_seconds_median": None, "generate_skipped": ""}
  if not encode_text:
    out["generate_skipped"] = "not asked (--quick: the tiny net is not in MiniLM's space)"
    return out
  try:
    encoder = gen.encoder
  except ImportError as e:  # the MiniLM package is optional at run time
    out["generate_skipped"] = str(e)
    return out
  if encoder.dim != gen.spec.text_dim:
    raise ValueError(f"text encoder {encoder.name} gives {encoder.dim}-d embeddings, the net "
                     f"takes {gen.spec.text_dim}-d")
  times = harness.time_calls(lambda: api.generate(gen, text, rng=key), repeats=repeats)
  out.update(generate_seconds=times, generate_seconds_median=harness.median(times))
  return out


def one_net_seconds(g: dict) -> tuple[float, str]:
  """The one-net figure held to ``ONE_NET_TARGET_SECONDS``, and what it includes: text to
  weights when it was timed, else the sampler alone."""
  if g["generate_seconds_median"] is not None:
    return g["generate_seconds_median"], "text to weights, MiniLM encoding included"
  return g["sampler_seconds_median"], "sampler alone, no text encoding"


def measure_cifar(size: DiTSize, config: ml_collections.ConfigDict, *, dtype: str,
                  repeats: int, train_steps: int, matmul_size: int, denoise_repeats: int,
                  seed: int = 0) -> dict:
  """The figures at the CIFAR size: matmul peak, train step, denoising call, FLOPs, MFU.

  Args:
    size: the DiT and batch timed (``CIFAR_SIZE``; ``QUICK_SIZE`` for smoke tests).
    config: the DiT config whose optimiser and schedule drive the timed train step.
    dtype: "float32" or "bfloat16".
    repeats: timed repeats of the matmul and of the train step.
    train_steps: train steps per timed repeat.
    matmul_size: n of the peak matmul.
    denoise_repeats: timed denoising calls.
    seed: data and parameter seed.

  Returns:
    dict with size, matmul, train, denoise, model_flops_per_example,
    achieved_gflops_per_s, mfu and mfu_peak (see ``format_report``).
  """
  matmul = {"float32": harness.matmul_peak(matmul_size, "float32", repeats)}
  if jax.default_backend() != "cpu" or dtype == "bfloat16":
    matmul["bfloat16"] = harness.matmul_peak(matmul_size, "bfloat16", repeats)
  result = measure_train_and_denoise(size, config, dtype=dtype, repeats=repeats,
                                     train_steps=train_steps, matmul=matmul[dtype],
                                     denoise_repeats=denoise_repeats, seed=seed)
  return dict(result, matmul=matmul)


def measure_train_and_denoise(size: DiTSize, config: ml_collections.ConfigDict, *,
                              dtype: str, repeats: int, train_steps: int, matmul: dict,
                              denoise_repeats: int, seed: int = 0) -> dict:
  """``measure_train``'s figures and one batch-1 denoising call on the trained parameters
  (``denoise``); arguments as ``measure_cifar`` and ``measure_train``."""
  result = measure_train(size, config, dtype=dtype, repeats=repeats, train_steps=train_steps,
                         matmul=matmul, seed=seed, keep_params=True)
  params = result["train"].pop("_params")
  result["denoise"] = bench_denoise(size, params, dtype, denoise_repeats, seed)
  return result


def measure_train(size: DiTSize, config: ml_collections.ConfigDict, *, dtype: str,
                  repeats: int, train_steps: int, matmul: dict, seed: int = 0,
                  keep_params: bool = False) -> dict:
  """The train step of ``size`` and its fraction of a same-run matmul.

  Args:
    size, config, dtype, repeats, train_steps, seed: as ``measure_cifar``.
    matmul: ``harness.matmul_peak``'s result in ``dtype``, measured in the same run.
    keep_params: leave the trained parameters in ``train["_params"]`` (for timing the
      denoising call on them).

  Returns:
    dict with size, train, model_flops_per_example, achieved_gflops_per_s, mfu, mfu_peak.
  """
  train = bench_train(size, config, dtype, repeats, train_steps, seed)
  if not keep_params:
    del train["_params"]
  flops = model_flops_per_example(size.flops_config(), training=True)
  achieved = flops * train["samples_per_s"]
  return {"size": dataclasses.asdict(size), "train": train,
          "model_flops_per_example": flops, "achieved_gflops_per_s": achieved / 1e9,
          "mfu": achieved / (matmul["gflops_per_s"] * 1e9),
          "mfu_peak": f"matmul {matmul['n']}^3 {dtype}"}


def batch_sweep(size: DiTSize, config: ml_collections.ConfigDict, *, dtype: str,
                batch_sizes: Sequence[int], repeats: int, train_steps: int, matmul: dict,
                seed: int = 0) -> list[dict]:
  """The train step of ``size`` at each batch of ``batch_sizes``, in increasing order.

  A batch that does not fit in the device's memory ends the sweep with its error (the
  larger ones would not fit either).

  Returns:
    One dict per batch: batch_size, samples_per_s, achieved_gflops_per_s and mfu (over
    ``matmul``, measured in the same run); or batch_size and error.
  """
  rows = []
  for b in sorted(set(batch_sizes)):
    try:
      r = measure_train(dataclasses.replace(size, batch_size=b), config, dtype=dtype,
                        repeats=repeats, train_steps=train_steps, matmul=matmul, seed=seed)
    except Exception as e:  # noqa: BLE001  (only running out of memory is expected here)
      if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
        raise
      rows.append({"batch_size": b, "error": " ".join(str(e).split())[:300]})
      break
    rows.append({"batch_size": b, "samples_per_s": r["train"]["samples_per_s"],
                 "achieved_gflops_per_s": r["achieved_gflops_per_s"], "mfu": r["mfu"]})
  return rows


def describe_batch_sweep(rows: list[dict], backend: str, dtype: str) -> list[str]:
  """The sweep's table, and on an accelerator in bfloat16 the MFU target's line."""
  if not rows:
    return []
  lines = ["train step by batch (MFU over the same-run matmul above):",
           harness.format_table(
               ["batch", "samples/s", "achieved GFLOP/s", "MFU"],
               [[x["batch_size"], x["error"], "", ""] if "error" in x else
                [x["batch_size"], f"{x['samples_per_s']:.4g}",
                 f"{x['achieved_gflops_per_s']:.4g}", f"{100 * x['mfu']:.1f} %"]
                for x in rows])]
  best = max((x for x in rows if "mfu" in x), key=lambda x: x["mfu"], default=None)
  if best and backend != "cpu" and dtype == "bfloat16":
    met = best["mfu"] >= MFU_TARGET
    lines.append(f"  target: bf16 MFU >= {100 * MFU_TARGET:.0f} % at the CIFAR size: "
                 f"{100 * best['mfu']:.1f} % at batch {best['batch_size']}, "
                 f"{'met' if met else 'NOT met'}")
  return lines + [""]


def resolve_dtype(dtype: str) -> str:
  """"auto" -> float32 on CPU, bfloat16 elsewhere; refuses anything but those two."""
  if dtype == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
  return dtype


def run(config: ml_collections.ConfigDict, *, quick: bool = False, repeats: int | None = None,
        dtype: str = "auto", matmul_size: int | None = None, train_steps: int | None = None,
        default_cnn: dict | None = None, default_image_size: int = 16,
        seed: int = 0, batch_sizes: Sequence[int] = ()) -> dict:
  """The whole DiT benchmark.

  Args:
    config: the DiT config used for generation (configs/dit.py "small", the default;
      "tiny" with quick); its optimiser and schedule settings also drive the timed train
      step.
    quick: tiny sizes, one repeat (smoke test).
    repeats: timed repeats (default 3; 1 with quick).
    dtype: DiT compute dtype at the CIFAR size; "auto": float32 on CPU, bfloat16 elsewhere.
    matmul_size: n of the peak matmul (default 2048 on CPU, 8192 elsewhere; 256 quick).
    train_steps: train steps per timed repeat (default 2 on CPU, 20 elsewhere; 1 quick).
    default_cnn: the default corpus's subtask net (``model`` settings plus ``embed_dim``)
      for the one-net figure; None: ``QUICK_CNN`` with quick, else ``CNN19K``.
    default_image_size: the default corpus's image size.
    seed: data and parameter seed.
    batch_sizes: train batches timed after the main figures (``batch_sweep``): on an
      accelerator, the batch that fills the chip is where its MFU is read.

  Returns:
    JSON-ready results (see ``format_report``).
  """
  if any(b < 1 for b in batch_sizes):
    raise ConfigError(f"--batch_sizes must be positive, got {list(batch_sizes)}")
  on_cpu = jax.default_backend() == "cpu"
  dtype = resolve_dtype(dtype)
  repeats = repeats or (1 if quick else 3)
  size = QUICK_SIZE if quick else CIFAR_SIZE
  matmul_size = matmul_size or (256 if quick else harness.default_matmul_size())
  train_steps = train_steps or (1 if quick else 2 if on_cpu else 20)
  cifar = measure_cifar(size, config, dtype=dtype, repeats=repeats, train_steps=train_steps,
                        matmul_size=matmul_size, seed=seed,
                        denoise_repeats=max(repeats, 1 if quick else 10))

  cnn = QUICK_CNN if quick else CNN19K
  default = bench_default_generation(
      config, default_cnn or cnn, image_size=default_image_size,
      repeats=max(repeats, 1 if quick else 10), seed=seed, encode_text=not quick)
  gen = small_generator(config, cnn, seed=seed)
  steps = 3 if quick else 50
  generate = bench_generate(gen, (1, 4) if quick else (1, 64), steps, repeats, seed)

  sweep = batch_sweep(size, config, dtype=dtype, batch_sizes=batch_sizes, repeats=repeats,
                      train_steps=train_steps, matmul=cifar["matmul"][dtype], seed=seed)
  lat = cifar["denoise"]["seconds_median"]
  return dict(
      cifar, benchmark="dit", quick=quick, machine=harness.machine_info(), batch_sweep=sweep,
      generate=generate, generate_config="tiny" if quick else "small",
      generate_default=default,
      derived={"ddpm1000_minutes_per_net": 1000 * lat / 60.0,
               "ddim50_minutes_per_net_at_cifar_size": 50 * lat / 60.0})


def describe_cifar_step(r: dict) -> str:
  """One line saying what the CIFAR-size train step of ``measure_cifar`` ran."""
  s, t = r["size"], r["train"]
  return (f"DiT-only train step (x0 loss + AdamW; no discriminator, permutation augmentation "
          f"or EMA): width {s['width']}, {s['depth']} layers, {s['num_heads']} heads, "
          f"{s['num_tokens']} tokens x {s['block_size']}, text dim {s['text_dim']}, <= "
          f"{s['max_classes']} classes, adaLN + cross-attention + prior bias; {t['dtype']}, "
          f"{t['params'] / 1e6:.1f} M params, batch {t['batch_size']} over {t['devices']} "
          f"device(s); compile {t['compile_seconds']:.1f} s; median of {len(t['seconds'])} x "
          f"{t['steps_per_repeat']} step(s)")


def describe_mfu(r: dict) -> str:
  """One line: model FLOPs per example, achieved GFLOP/s and the same-run matmul fraction."""
  t = r["train"]
  m = r["matmul"][t["dtype"]]
  return (f"model FLOPs/example (train, models.model_flops_per_example): "
          f"{r['model_flops_per_example'] / 1e9:.4g} GFLOP (XLA cost analysis: "
          f"{t['xla_flops_per_example'] / 1e9:.4g}); achieved {r['achieved_gflops_per_s']:.4g} "
          f"GFLOP/s; MFU {100 * r['mfu']:.1f}% of {r['mfu_peak']} measured in this run "
          f"({m['gflops_per_s']:.4g} GFLOP/s over {m['devices']} device(s))")


def describe_default_generation(g: dict, backend: str, quick: bool = False) -> list[str]:
  """Lines on the one-net figure at the default config, held to the target on a CPU
  (with quick: the tiny config, a smoke test, held to nothing)."""
  sec, what = one_net_seconds(g)
  lines = [
      f"one net at the {'tiny config (--quick)' if quick else 'default config'} (DiT width "
      f"{g['width']}, depth {g['depth']}; "
      f"{g['num_tokens']} tokens x {g['block_size']}, D={g['D']}; {g['sampler'].upper()}-"
      f"{g['steps']}, guidance {g['guidance']:g}; random weights): "
      f"{1e3 * sec:.3g} ms ({what})"
      + (f", sampler alone {1e3 * g['sampler_seconds_median']:.3g} ms"
         if g["generate_seconds_median"] is not None else ""),
  ]
  if g["generate_skipped"]:
    lines.append(f"  text to weights not timed: {g['generate_skipped']}")
  if backend == "cpu" and not quick:
    met = "met" if sec <= ONE_NET_TARGET_SECONDS else "NOT met"
    lines.append(f"  target: one net in <= {1e3 * ONE_NET_TARGET_SECONDS:g} ms on the "
                 f"project's 2-core CPU: {met}")
  return lines


def format_report(r: dict) -> str:
  """The printed report: machine, the CIFAR-size table, MFU, and the generation figures."""
  t, dn, g, d = r["train"], r["denoise"], r["generate"], r["derived"]
  lines = [
      "DiT benchmark" + (" (--quick: tiny sizes, a smoke test only)" if r["quick"] else ""),
      f"machine: {harness.describe_machine(r['machine'])}",
      describe_cifar_step(r),
      "",
      harness.format_table(
          ["figure", "t2w_jax"],
          [["train samples/s", t["samples_per_s"]],
           ["one denoising call, batch 1 (s)", dn["seconds_median"]],
           ["1000-step DDPM per net (min, 1000 calls)", d["ddpm1000_minutes_per_net"]],
           ["DDIM-50 per net at this size (min)", d["ddim50_minutes_per_net_at_cifar_size"]]]),
      "For the PyTorch T2W beside these figures: python launch/bench.py pytorch "
      "--t2w_repo PATH",
      "",
      describe_mfu(r),
      "",
      *describe_default_generation(r["generate_default"], r["machine"]["backend"],
                                   r["quick"]),
      "",
      *describe_batch_sweep(r.get("batch_sweep") or [], r["machine"]["backend"], t["dtype"]),
      f"generation at the {r['generate_config']} config: DDIM-{g['steps']}, guidance "
      f"{g['guidance']:g}, {g['num_tokens']} tokens x {g['block_size']} (D={g['D']}), "
      f"{g['params'] / 1e6:.2f} M params, random weights and class embeddings",
      harness.format_table(["nets", "seconds", "nets/s", "first call incl. compile (s)"],
                         [[x["nets"], x["seconds_median"], x["nets_per_s"],
                           x["first_call_seconds"]] for x in g["runs"]]),
  ]
  return "\n".join(lines)

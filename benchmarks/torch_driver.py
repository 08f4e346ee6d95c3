"""The PyTorch side of ``launch/bench.py pytorch``: times the PyTorch T2W from a checkout.

Run as a script by an interpreter that has torch (``pytorch_bench.run`` starts it in a
subprocess, ``--torch_python``); it imports only the standard library at module level, and
torch, numpy and the user's checkout inside functions, so that a Python with torch but
without JAX or t2w_jax can run it, and a Python without torch can report that.

    python torch_driver.py --t2w_repo PATH --config JSON --json OUT [--repeats N] ...

It builds the checkout's model (``T2W.models.transformer.T2W``) and diffusion
(``T2W.diffusion.create_diffusion``, ``UniformSampler``) as the checkout's ``main.py`` does
at the size ``--config`` gives, and times, the same way as ``dit_bench``:

* the DiT-only train step: timesteps from ``UniformSampler``, ``training_losses`` (q_sample
  and the x0 MSE), backward, gradient clipping and the checkout's AdamW
  (``configure_optimizers``); the discriminator and EMA of its ``train_epoch`` are left
  out, as ``dit_bench`` leaves out ours. One warm-up step, then the median of ``repeats``
  repeats of ``train_steps`` steps.
* one denoising call: one forward of the model at batch 1, t=500, under
  ``torch.inference_mode``; one warm-up call, then the median of ``denoise_repeats`` calls.
* an n x n x n matmul (``torch.mm``) in ``--dtype``, the peak its FLOPs are measured
  against; the step's FLOPs come from ``torch.utils.flop_counter`` on the warm-up step.

``--dtype bfloat16`` runs the forwards under ``torch.autocast`` (float32 master weights).

It writes one JSON object to ``--json``: ``{"status": "ok", ...}``; ``{"status":
"no_torch", "reason"}``; ``{"status": "import_error" | "build_error", "what", "reason"}``
naming what it could not import or build; or ``{"status": "crashed", "reason",
"traceback"}``. It exits 0 whenever it wrote that file.
"""
import argparse
import importlib
import json
import os
import statistics
import sys
import time

try:
  from benchmarks.driver_io import one_line, write_result
except ImportError:  # run as a script by the torch Python: this directory is on sys.path
  from driver_io import one_line, write_result  # type: ignore[no-redef]

# What the checkout must provide, as (module, attribute).
MODEL = ("T2W.models.transformer", "T2W")
EMBEDDER = ("T2W.models.transformer", "FrequencyEmbedder")
DIFFUSION = ("T2W.diffusion", "create_diffusion")
SAMPLER = ("T2W.diffusion.timestep_sampler", "UniformSampler")


class CheckoutError(Exception):
  """Something the checkout does not provide or cannot build; ``what`` names it."""

  def __init__(self, status: str, what: str, reason: str):
    super().__init__(f"{what}: {reason}")
    self.status, self.what, self.reason = status, what, reason



def import_checkout(repo: str) -> dict:
  """The checkout's classes and functions by name, with ``repo`` first on sys.path.

  Raises:
    CheckoutError("import_error", "module.attr", reason): one is missing or fails to import.
  """
  sys.path.insert(0, os.path.abspath(repo))
  out = {}
  for name, (module, attr) in (("model", MODEL), ("embedder", EMBEDDER),
                               ("diffusion", DIFFUSION), ("sampler", SAMPLER)):
    try:
      out[name] = getattr(importlib.import_module(module), attr)
    except Exception as e:  # any failure inside the user's code is reported by name
      raise CheckoutError("import_error", f"{module}.{attr}", one_line(e)) from e
  return out


def device_agnostic_forward(self, x):
  """``FrequencyEmbedder.forward`` of the checkout with its ``.to('cuda', torch.float)``
  replaced by the input's own device: the same arithmetic, runnable on a CPU."""
  import torch  # pylint: disable=import-outside-toplevel
  n = x.size(0)
  if x.dim() == 1:
    x = x.unsqueeze(1)
  x_unsqueezed = x.unsqueeze(-1).to(self.frequencies.device, torch.float)
  scaled = self.frequencies.view(1, 1, -1) * x_unsqueezed
  return torch.cat([torch.sin(scaled), torch.cos(scaled), x_unsqueezed], dim=-1).view(n, -1)


def build(parts: dict, cfg: dict, device):
  """The checkout's model and diffusion at ``cfg`` (the keys of ``pytorch_bench``'s sizes).

  Raises:
    CheckoutError("build_error", ...): the checkout's constructors refuse these arguments.
  """
  try:
    model = parts["model"](
        parameter_sizes=[list(g) for g in cfg["parameter_sizes"]],
        parameter_names=list(cfg["parameter_names"]),
        predict_xstart=True, absolute_loss_conditioning=True,
        chunk_size=cfg["chunk_size"], split_policy=cfg["split_policy"],
        max_freq_log2=cfg["max_freq_log2"], num_frequencies=cfg["num_frequencies"],
        n_embd=cfg["n_embd"], encoder_depth=1, decoder_depth=1, n_layer=cfg["n_layer"],
        n_head=cfg["n_head"], attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0).to(device)
  except Exception as e:
    raise CheckoutError("build_error", f"{MODEL[0]}.{MODEL[1]}(...)", one_line(e)) from e
  try:
    diffusion = parts["diffusion"](learn_sigma=False, predict_xstart=True,
                                   noise_schedule="linear", steps=cfg["num_timesteps"])
    sampler = parts["sampler"](diffusion)
  except Exception as e:
    raise CheckoutError("build_error", f"{DIFFUSION[0]}.{DIFFUSION[1]}(...)",
                        one_line(e)) from e
  return model, diffusion, sampler


def _sync(torch, device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize()


def time_matmul(torch, device, n: int, repeats: int, dtype: str = "float32") -> dict:
  """GFLOP/s of an n x n x n ``torch.mm`` in ``dtype`` (median of ``repeats`` after a
  warm-up)."""
  a, b = (torch.randn(n, n, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
  torch.mm(a, b)
  _sync(torch, device)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch.mm(a, b)
    _sync(torch, device)
    times.append(time.perf_counter() - start)
  sec = statistics.median(times)
  return {"n": n, "dtype": dtype, "seconds": sec, "gflops_per_s": 2.0 * n**3 / sec / 1e9}


def bench(repo: str, cfg: dict, *, repeats: int, train_steps: int, denoise_repeats: int,
          threads: int, matmul_size: int, seed: int, dtype: str = "float32") -> dict:
  """Imports torch and the checkout, builds the model and times it (module docstring).

  ``dtype`` "bfloat16" runs the forward passes under ``torch.autocast`` in bfloat16 (float32
  master weights and optimiser, PyTorch's own mixed-precision recipe) and times a bfloat16
  matmul; "float32" runs as the checkout does.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except Exception as e:  # ImportError, or a broken install that fails while importing
    return {"status": "no_torch", "python": sys.executable, "reason": one_line(e)}
  try:
    import numpy as np  # pylint: disable=import-outside-toplevel
    parts = import_checkout(repo)
  except CheckoutError as e:
    return {"status": e.status, "what": e.what, "reason": e.reason}
  except ImportError as e:
    return {"status": "import_error", "what": "numpy", "reason": one_line(e)}

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  np.random.seed(seed)  # UniformSampler draws timesteps with numpy
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  patched = []
  if device.type == "cpu":
    # The checkout's FrequencyEmbedder moves its input to 'cuda' unconditionally.
    parts["embedder"].forward = device_agnostic_forward
    patched.append(f"{EMBEDDER[0]}.{EMBEDDER[1]}.forward: .to('cuda') -> the input's device")
  try:
    model, diffusion, sampler = build(parts, cfg, device)
  except CheckoutError as e:
    return {"status": e.status, "what": e.what, "reason": e.reason}

  b = cfg["batch_size"]
  d = sum(sum(g) for g in cfg["parameter_sizes"])
  x0 = torch.randn(b, d, device=device)
  cond = torch.randn(b, cfg["text_dim"], device=device)
  opt = model.configure_optimizers(lr=cfg["learning_rate"], wd=cfg["weight_decay"],
                                   betas=(0.9, cfg["beta2"]))
  params = list(model.parameters())

  def autocast():
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step():
    t, weights = sampler.sample(b, device)
    with autocast():
      losses = diffusion.training_losses(model, x0, t, model_kwargs={"cond": cond})
      loss = (losses["loss"].float() * weights).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
    opt.step()
    return loss

  model.train()
  flops = None
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
  except ImportError:  # torch < 2.1: the warm-up step runs uncounted
    step()
  else:
    counter = FlopCounterMode(display=False)
    with counter:
      step()
    flops = float(counter.get_total_flops())
  _sync(torch, device)
  times, loss = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(train_steps):
      loss = step()
    loss = float(loss.item())  # also waits for the device
    _sync(torch, device)
    times.append(time.perf_counter() - start)
  sec = statistics.median(times) / train_steps

  model.eval()
  x_t = torch.randn(1, d, device=device)
  t = torch.full((1,), 500, dtype=torch.long, device=device)
  c = torch.randn(1, cfg["text_dim"], device=device)
  den = []
  with torch.inference_mode(), autocast():
    for i in range(denoise_repeats + 1):
      start = time.perf_counter()
      out = model(x_t, t, c)
      _sync(torch, device)
      if i:  # the first call is the warm-up
        den.append(time.perf_counter() - start)
  if tuple(out.shape) != (1, d):
    return {"status": "build_error", "what": f"{MODEL[0]}.{MODEL[1]}.forward",
            "reason": f"gave shape {tuple(out.shape)}, expected {(1, d)}"}
  matmul = time_matmul(torch, device, matmul_size, repeats, dtype)

  return {
      "status": "ok", "python": sys.executable, "torch_version": torch.__version__,
      "dtype": dtype,
      "device": str(device), "threads": torch.get_num_threads(), "patched": patched,
      "params": sum(p.numel() for p in params),
      "num_tokens": int(model.decoder.block_size), "D": d,
      "train": {"batch_size": b, "steps_per_repeat": train_steps, "seconds": times,
                "seconds_per_step": sec, "samples_per_s": b / sec, "final_loss": loss,
                "flops_per_example": None if flops is None else flops / b},
      "denoise": {"batch_size": 1, "seconds": den, "seconds_median": statistics.median(den)},
      "matmul": matmul,
  }


def main(argv=None) -> int:
  """Parses the command line, runs ``bench`` and writes its JSON; 0 unless it crashed."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--t2w_repo", required=True, help="the PyTorch T2W checkout")
  p.add_argument("--config", required=True, help="the size, as JSON (pytorch_bench)")
  p.add_argument("--json", required=True, help="where to write the result")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--train_steps", type=int, default=2)
  p.add_argument("--denoise_repeats", type=int, default=10)
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  p.add_argument("--matmul_size", type=int, default=2048)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  args = p.parse_args(argv)
  return write_result(
      lambda: bench(args.t2w_repo, json.loads(args.config), repeats=args.repeats,
                    train_steps=args.train_steps, denoise_repeats=args.denoise_repeats,
                    threads=args.threads, matmul_size=args.matmul_size, seed=args.seed,
                    dtype=args.dtype),
      args.json, what="the timed run")


if __name__ == "__main__":
  sys.exit(main())

"""The PyTorch peers of ``launch/bench.py corpus``: the corpus's CNN trained in torch.

Run as a script by an interpreter that has torch (``corpus_bench.run_torch_peers`` starts it
in a subprocess, ``--torch_python``); it imports only the standard library at module level,
and torch and numpy inside functions, so that a Python with torch but without JAX or t2w_jax
can run it, and a Python without torch can report that.

    python torch_corpus_driver.py --inputs DIR --json OUT [--threads N]

``DIR`` holds what ``corpus_bench.write_peer_inputs`` wrote: the settings (``peer.json``),
the train and test images, each net's start (the trainer's shared base net), and, per net,
its batches (image rows and labels of every step, drawn by our trainer's own keys), its
class embeddings and mask, and its validation and test rows. Both peers train the same CNN
(``zoo/cnn.py``: 3x3 SAME convolutions with bias and ReLU, mean pooling, a dense head into
the text space, logits ``scale * cos``, padded classes at -inf) from the same start on the
same batches, with Adam under the cosine decay of ``masstrain.adam_cosine``, the same
validation checks every ``eval_every`` steps and the same early-stopping rule (the start is
the first check; a check counts only if strictly better; a net stops after ``patience``
checks without a gain, and the best-validating net is kept), then measure the kept net's
and the start's test accuracy, as our trainer does:

* ``vmap``: every net at once, ``torch.func.functional_call`` + ``torch.func.grad`` under
  ``torch.func.vmap`` over the stacked parameters, Adam written out on the stacked tensors
  (a finished net is frozen while the others go on);
* ``loop``: one net at a time, an ``nn.Module``, ``torch.optim.Adam`` and a ``LambdaLR``.

It writes one JSON object to ``--json``: ``{"status": "ok", "vmap": {...}, "loop": {...}}``,
``{"status": "no_torch", "reason"}`` or ``{"status": "crashed", "reason", "traceback"}``,
and exits 0 whenever it wrote that file.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

try:
  from benchmarks.driver_io import one_line, write_result
except ImportError:  # run as a script by the torch Python: this directory is on sys.path
  from driver_io import one_line, write_result  # type: ignore[no-redef]

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults
COSINE_ALPHA = 0.05  # masstrain.adam_cosine: the rate decays to 5 %



def cosine_factor(step: int, steps: int) -> float:
  """optax.cosine_decay_schedule(1, steps, alpha) at ``step``: the rate's multiplier."""
  t = min(step, steps) / steps
  return (1 - COSINE_ALPHA) * 0.5 * (1 + math.cos(math.pi * t)) + COSINE_ALPHA


def same_pads(size: int, stride: int, k: int = 3) -> tuple:
  """(low, high) padding of XLA's SAME convolution (``cnn._im2col_conv``)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def build(torch, cfg: dict):
  """The corpus CNN as an ``nn.Module`` whose forward is ``(images uint8 NHWC, class_emb,
  mask) -> masked logits``."""
  nn, F = torch.nn, torch.nn.functional
  widths, strides, size = cfg["widths"], cfg["strides"], cfg["image_size"]

  class CNN(nn.Module):
    def __init__(self):
      super().__init__()
      cins = [3] + list(widths[:-1])
      self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, stride=s, padding=0)
                                 for i, o, s in zip(cins, widths, strides))
      self.head = nn.Linear(widths[-1], cfg["embed_dim"])
      pads, h = [], size
      for s in strides:
        lo, hi = same_pads(h, s)
        pads.append((lo, hi, lo, hi))
        h = -(-h // s)
      self.pads = pads

    def forward(self, images, class_emb, mask):
      x = images.float() / 255.0
      x = ((x - 0.5) * 4.0).permute(0, 3, 1, 2)
      for conv, pad in zip(self.convs, self.pads):
        x = F.relu(conv(F.pad(x, pad)))
      z = unit(self.head(x.mean(dim=(2, 3))))
      logits = cfg["logit_scale"] * z @ unit(class_emb).T
      return logits.masked_fill(~mask[None, :], float("-inf"))

  def unit(x, eps=1e-8):  # cnn.unit_normalize
    nonzero = (x != 0).any(dim=-1, keepdim=True)
    norm = torch.linalg.norm(torch.where(nonzero, x, torch.ones_like(x)), dim=-1, keepdim=True)
    return x / (torch.where(nonzero, norm, torch.zeros_like(norm)) + eps)

  return CNN


def load_base(torch, module, arrays: dict) -> dict:
  """The start's parameters (flax layout) as the module's named tensors."""
  out = {}
  for i in range(len(module.convs)):
    out[f"convs.{i}.weight"] = torch.from_numpy(arrays[f"conv_{i}/kernel"]).permute(3, 2, 0, 1)
    out[f"convs.{i}.bias"] = torch.from_numpy(arrays[f"conv_{i}/bias"])
  out["head.weight"] = torch.from_numpy(arrays["head/kernel"]).T
  out["head.bias"] = torch.from_numpy(arrays["head/bias"])
  return {k: v.contiguous().float() for k, v in out.items()}


def accuracy(torch, logits, labels, valid):
  """The fraction of ``valid`` entries predicted right (masstrain.accuracy)."""
  hits = (logits.argmax(-1) == labels) & valid
  return hits.sum(-1).float() / valid.sum(-1).clamp(min=1).float()


def _eval_inputs(torch, rows, valid):
  """(flat rows, flat labels, flat valid) of one net's (K, per) eval set."""
  k, per = rows.shape
  labels = torch.arange(k).repeat_interleave(per)
  return rows.reshape(-1), labels, valid.reshape(-1)


def train_loop(torch, np, cfg, d, net_ids):
  """The plain per-net loop; returns per-net trained/base test accuracy, kept and run steps."""
  CNN = build(torch, cfg)
  base = None
  out = {"trained_acc": [], "base_acc": [], "kept_step": [], "steps_run": []}
  for i in net_ids:
    model = CNN()
    if base is None:
      base = load_base(torch, model, d["base"])
    model.load_state_dict(base)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"],
                           betas=(ADAM_B1, ADAM_B2), eps=ADAM_EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: cosine_factor(t, cfg["steps"]))
    emb, mask = d["class_emb"][i], d["mask"][i]
    vrows, vlabels, vvalid = _eval_inputs(torch, d["val_rows"][i], d["val_valid"][i])

    def val_acc():
      with torch.no_grad():
        return float(accuracy(torch, model(d["images"][vrows], emb, mask), vlabels, vvalid))

    best, best_state, kept, bad, ran = val_acc(), None, 0, 0, 0
    for step in range(cfg["steps"]):
      logits = model(d["images"][d["rows"][i, step]], emb, mask)
      loss = torch.nn.functional.cross_entropy(logits, d["labels"][i, step])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      ran = step + 1
      if cfg["eval_every"] and ran % cfg["eval_every"] == 0:
        acc = val_acc()
        if acc > best:
          best, kept, bad = acc, ran, 0
          best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
          bad += 1
          if bad >= cfg["patience"]:
            break
    if not cfg["eval_every"]:
      kept = ran
    elif best_state is None:
      model.load_state_dict(base)
    else:
      model.load_state_dict(best_state)
    trows, tlabels, tvalid = _eval_inputs(torch, d["test_rows"][i], d["test_valid"][i])
    with torch.no_grad():
      x = d["test_images"][trows]
      out["trained_acc"].append(float(accuracy(torch, model(x, emb, mask), tlabels, tvalid)))
      model.load_state_dict(base)
      out["base_acc"].append(float(accuracy(torch, model(x, emb, mask), tlabels, tvalid)))
    out["kept_step"].append(kept)
    out["steps_run"].append(ran)
  return out


def train_vmap(torch, np, cfg, d, net_ids):
  """Every net at once under torch.func.vmap; the same outputs as ``train_loop``."""
  from torch.func import functional_call, grad, vmap  # pylint: disable=import-outside-toplevel
  CNN = build(torch, cfg)
  model = CNN()
  base = load_base(torch, model, d["base"])
  idx = torch.as_tensor(list(net_ids))
  n = len(idx)
  params = {k: v[None].repeat((n,) + (1,) * v.ndim).clone() for k, v in base.items()}
  m = {k: torch.zeros_like(v) for k, v in params.items()}
  v2 = {k: torch.zeros_like(v) for k, v in params.items()}
  emb, mask = d["class_emb"][idx], d["mask"][idx]

  def logits_fn(p, x, e, mk):
    return functional_call(model, p, (x, e, mk))

  def loss_fn(p, x, y, e, mk):
    return torch.nn.functional.cross_entropy(logits_fn(p, x, e, mk), y)

  grads_fn = vmap(grad(loss_fn))
  forward = vmap(logits_fn)

  def accs(p, rows, valid, images):
    k, per = rows.shape[1:]
    labels = torch.arange(k).repeat_interleave(per)
    with torch.no_grad():
      lg = forward(p, images[rows.reshape(n, -1)], emb, mask)
    return accuracy(torch, lg, labels[None], valid.reshape(n, -1))

  vrows, vvalid = d["val_rows"][idx], d["val_valid"][idx]
  best = accs(params, vrows, vvalid, d["images"])
  best_params = {k: v.clone() for k, v in params.items()}
  kept = torch.zeros(n, dtype=torch.long)
  ran = torch.zeros(n, dtype=torch.long)
  bad = torch.zeros(n, dtype=torch.long)
  active = torch.ones(n, dtype=torch.bool)
  lr = cfg["learning_rate"]
  for step in range(cfg["steps"]):
    if not bool(active.any()):
      break
    g = grads_fn(params, d["images"][d["rows"][idx, step]], d["labels"][idx, step], emb, mask)
    t = step + 1
    rate = lr * cosine_factor(step, cfg["steps"])
    with torch.no_grad():
      for k in params:
        on = active.view((-1,) + (1,) * (params[k].ndim - 1))
        m_new = ADAM_B1 * m[k] + (1 - ADAM_B1) * g[k]
        v_new = ADAM_B2 * v2[k] + (1 - ADAM_B2) * g[k] * g[k]
        update = (m_new / (1 - ADAM_B1 ** t)) / (torch.sqrt(v_new / (1 - ADAM_B2 ** t))
                                                  + ADAM_EPS)
        params[k] = torch.where(on, params[k] - rate * update, params[k])
        m[k] = torch.where(on, m_new, m[k])
        v2[k] = torch.where(on, v_new, v2[k])
    ran = torch.where(active, torch.full_like(ran, t), ran)
    if cfg["eval_every"] and t % cfg["eval_every"] == 0:
      acc = accs(params, vrows, vvalid, d["images"])
      better = active & (acc > best)
      for k in params:
        on = better.view((-1,) + (1,) * (params[k].ndim - 1))
        best_params[k] = torch.where(on, params[k], best_params[k])
      best = torch.where(better, acc, best)
      kept = torch.where(better, torch.full_like(kept, t), kept)
      bad = torch.where(better, torch.zeros_like(bad), bad + active.long())
      active = active & (bad < cfg["patience"])
  final = best_params if cfg["eval_every"] else params
  if not cfg["eval_every"]:
    kept = ran
  trows, tvalid = d["test_rows"][idx], d["test_valid"][idx]
  base_stack = {k: v[None].repeat((n,) + (1,) * v.ndim) for k, v in base.items()}
  return {"trained_acc": accs(final, trows, tvalid, d["test_images"]).tolist(),
          "base_acc": accs(base_stack, trows, tvalid, d["test_images"]).tolist(),
          "kept_step": kept.tolist(), "steps_run": ran.tolist()}


def load_inputs(torch, np, path: str) -> tuple:
  """(settings, tensors) from ``corpus_bench.write_peer_inputs``'s directory."""
  with open(os.path.join(path, "peer.json")) as f:
    cfg = json.load(f)
  d = {}
  for name in ("images", "test_images", "rows", "labels", "class_emb", "mask", "val_rows",
               "val_valid", "test_rows", "test_valid"):
    a = np.load(os.path.join(path, f"{name}.npy"))
    d[name] = torch.from_numpy(a.astype(np.int64) if a.dtype == np.int32 else a)
  with np.load(os.path.join(path, "base.npz")) as z:
    d["base"] = {k: z[k] for k in z.files}
  return cfg, d


def bench(path: str, threads: int) -> dict:
  """Imports torch, trains both peers ``repeats`` times after a warm-up, and reports."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except Exception as e:  # ImportError, or a broken install that fails while importing
    return {"status": "no_torch", "python": sys.executable, "reason": one_line(e)}
  import numpy as np  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  cfg, d = load_inputs(torch, np, path)
  out = {"status": "ok", "python": sys.executable, "torch_version": torch.__version__,
         "threads": torch.get_num_threads(), "device": "cpu"}
  for name, fn, nets in (("vmap", train_vmap, cfg["vmap_nets"]),
                         ("loop", train_loop, cfg["loop_nets"])):
    ids = list(range(nets))
    warm = dict(cfg, steps=min(2, cfg["steps"]), eval_every=0)
    fn(torch, np, warm, d, ids[:min(2, nets)])  # warm-up: first-call costs
    times, res = [], None
    for _ in range(cfg["repeats"]):
      start = time.perf_counter()
      res = fn(torch, np, cfg, d, ids)
      times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    out[name] = dict(res, nets=nets, steps=cfg["steps"], seconds=times, seconds_median=sec,
                     net_steps_per_s=nets * cfg["steps"] / sec, nets_per_hour=3600 * nets / sec)
  return out


def main(argv=None) -> int:
  """Parses the command line, runs ``bench`` and writes its JSON; 0 unless it crashed."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--inputs", required=True, help="the directory write_peer_inputs wrote")
  p.add_argument("--json", required=True, help="where to write the result")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  args = p.parse_args(argv)
  return write_result(lambda: bench(args.inputs, args.threads), args.json)


if __name__ == "__main__":
  sys.exit(main())

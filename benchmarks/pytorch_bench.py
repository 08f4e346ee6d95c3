"""Side-by-side benchmark: t2w_jax and the PyTorch T2W, on the same machine, in one run.

``python launch/bench.py pytorch --t2w_repo PATH [--torch_python PYTHON]`` takes a
checkout of the PyTorch T2W (github.com/TianSuya/T2W), builds its model at its CIFAR-100
config in a subprocess (``torch_driver.py``, run by ``--torch_python``; torch is an optional
extra, never a requirement of t2w_jax or its tests), and times its train step and one
denoising call the way ``dit_bench`` times ours; then it times ours and prints both, the
ratios, and each side's fraction of its own library's matmul measured in the same run.

Both sides at the CIFAR size, in float32 (the PyTorch config runs without amp) or, with
``--dtype bfloat16``, both in bfloat16 (ours: the DiT's compute dtype; theirs: the forwards
under ``torch.autocast``), each against its own library's matmul in that dtype:

* ours: ``dit_bench.measure_cifar`` at ``dit_bench.CIFAR_SIZE`` (width 1024, 6 layers, 8
  heads, 34 tokens of 576 values, batch 32; adaLN, cross-attention, prior bias), and the
  train step of the same DiT with the PyTorch T2W's conditioning (``conditioning="token"``:
  the text as one more token, no cross-attention), the equal-work comparison.
* theirs: ``PYTORCH_CIFAR``, from the checkout's configs/train/cifar100_classifier.yaml
  (width 1024, 6 layers, 8 heads, 576-value chunks within layers, 1000 linear-schedule
  timesteps, batch 32, AdamW lr 4e-4, wd 0.1, clipping 0.1) and its
  data_gen/cifar100/p_dataset.py (the adapter [[8192, 16], [8192, 512]]); its 32 weight
  tokens plus a timestep and a text token make the same 34 tokens.

Without torch in ``--torch_python`` the report says so and prints our figures and our
same-run matmul fraction only. A path that is not such a checkout, or a checkout whose
model cannot be imported or built, is a user error naming what is missing.

The report also carries one net at the default config (``dit_bench.
bench_default_generation``) against its target, ``dit_bench.ONE_NET_TARGET_SECONDS``.
"""
import dataclasses
import json
import os
import sys
import tempfile

import jax
import ml_collections

from benchmarks import dit_bench
from benchmarks import harness
from benchmarks.harness import check_python  # noqa: F401  (also this module's API)
from t2w_jax.errors import ConfigError, MissingError

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_driver.py")
ROOT = harness.ROOT
# Files the driver imports from; their absence means the path is not a T2W checkout.
REQUIRED_FILES = ("T2W/models/transformer.py", "T2W/diffusion/__init__.py",
                  "T2W/diffusion/timestep_sampler.py")

PYTORCH_CIFAR = {
    # data_gen/cifar100/p_dataset.py: Linear(512, 16) and Linear(16, 512), weight + bias.
    "parameter_sizes": [[8192, 16], [8192, 512]],
    "parameter_names": ["weight", "bias", "weight", "bias"],
    # configs/train/cifar100_classifier.yaml ("transformer" and "train").
    "chunk_size": 576, "split_policy": "chunk_within_layer", "max_freq_log2": 14,
    "num_frequencies": 128, "n_embd": 1024, "n_layer": 6, "n_head": 8, "batch_size": 32,
    "learning_rate": 4e-4, "weight_decay": 0.1, "beta2": 0.999, "grad_clip": 0.1,
    # main.py: create_diffusion(steps=1000); the text token is a 512-d CLIP feature.
    "num_timesteps": 1000, "text_dim": 512,
}
# A smoke-test size of the same model (the text token stays 512-d: the model fixes it).
PYTORCH_QUICK = dict(PYTORCH_CIFAR, parameter_sizes=[[64, 4], [64, 16]], chunk_size=16,
                     num_frequencies=8, n_embd=32, n_layer=1, n_head=2, batch_size=4)


def check_t2w_repo(path: str) -> str:
  """The absolute path of a PyTorch T2W checkout.

  Raises:
    MissingError: ``path`` is not a directory, or lacks a file of ``REQUIRED_FILES``.
  """
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(full):
    raise MissingError(f"--t2w_repo {path!r} is not a directory; pass the path of a checkout "
                       f"of the PyTorch T2W (github.com/TianSuya/T2W)")
  missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(full, f))]
  if missing:
    raise MissingError(f"--t2w_repo {path!r} is not a checkout of the PyTorch T2W: it has no "
                       f"{', '.join(missing)}")
  return full


def run_torch_side(repo: str, python: str, cfg: dict, *, repeats: int, train_steps: int,
                   denoise_repeats: int, threads: int, matmul_size: int, seed: int = 0,
                   timeout: float = 3600, dtype: str = "float32") -> dict:
  """Runs ``torch_driver.py`` with ``python``; its result, with status "ok" or "no_torch".

  Raises:
    MissingError: the checkout lacks what the driver imports (named), or ``python`` cannot
      be started.
    ConfigError: the checkout's model or diffusion refuses the CIFAR config (named).
    RuntimeError: the driver crashed or ran past ``timeout`` seconds.
  """
  with tempfile.TemporaryDirectory(prefix="t2w_torch_") as tmp:
    cmd = [python, DRIVER, "--t2w_repo", repo, "--config", json.dumps(cfg),
           "--repeats", str(repeats), "--train_steps", str(train_steps),
           "--denoise_repeats", str(denoise_repeats), "--threads", str(threads),
           "--matmul_size", str(matmul_size), "--seed", str(seed), "--dtype", dtype,
           "--json", os.path.join(tmp, "torch.json")]
    result = harness.run_driver(cmd, threads=threads, timeout=timeout,
                                what="the PyTorch side")
  status = result.get("status")
  if status in ("ok", "no_torch"):
    return result
  where = f"the PyTorch T2W checkout {repo!r}"
  if status == "import_error":
    raise MissingError(f"{where}: could not import {result['what']} with {python}: "
                       f"{result['reason']}")
  if status == "build_error":
    raise ConfigError(f"{where}: {result['what']} failed at the CIFAR config: "
                      f"{result['reason']}")
  raise RuntimeError(f"the PyTorch driver failed ({status}): {result.get('reason')}\n"
                     f"{result.get('traceback', '')}")


def matmul_fraction(flops_per_example: float | None, samples_per_s: float,
                    matmul_gflops_per_s: float) -> float | None:
  """Achieved FLOP/s of a train step over a matmul's; None without a FLOP count."""
  if not flops_per_example:
    return None
  return flops_per_example * samples_per_s / (matmul_gflops_per_s * 1e9)


def compare(ours: dict, theirs: dict) -> dict:
  """The ratios of two same-run results (``measure_ours``'s and the driver's).

  Returns:
    train_samples_per_s: ours / theirs (above 1: ours trains faster).
    denoise_speedup: their latency / ours (above 1: our denoising call is faster).
    token_concat_train_samples_per_s: the same for our DiT with their conditioning (None
      when it was not timed).
    adaln_block_train_samples_per_s, adaln_block_params: our default with DiT's adaLN per
      block instead of adaLN-single: its train speed and parameter count over theirs (None
      when not timed).
    train_ceiling, token_concat_train_ceiling: the train ratio our step (and the
      token-concat one) would reach at 100 % of our library's matmul in the same run: its
      FLOPs per example at that rate, over their samples/s (None when not timed).
    train_at_their_matmul, token_concat_train_at_their_matmul: the train ratio our step
      (and the token-concat one) would reach if its products ran at torch's matmul rate in
      the same run instead of ours, the rest of its time unchanged: its time per example
      less its FLOPs at our rate, plus its FLOPs at theirs (None when not timed; an
      estimate that counts every product at the n^3 matmul's rate on both sides).
    per_token_train_samples_per_s, per_token_params, per_token_denoise_speedup: our default
      with a map per token position: the same ratios and the denoising call's (None when
      not timed).
    params: our default's parameter count over theirs.
    flops_per_example: our model FLOPs per train example / theirs (None without theirs).
    their_matmul_fraction: their step's FLOP/s over torch's matmul (None without FLOPs).
  """
  tt = theirs["train"]
  their_flops = tt.get("flops_per_example")
  token = ours.get("token_concat")
  block = ours.get("adaln_block")
  per_token = ours.get("per_token")
  peak = ours["matmul"][ours["train"]["dtype"]]["gflops_per_s"] * 1e9
  their_peak = theirs["matmul"]["gflops_per_s"] * 1e9

  def ceiling(result):
    return peak / result["model_flops_per_example"] / tt["samples_per_s"]

  def at_their_matmul(result):
    flops = result["model_flops_per_example"]
    seconds = (1 / result["train"]["samples_per_s"] - flops / peak + flops / their_peak)
    return 1 / seconds / tt["samples_per_s"]
  return {
      "train_ceiling": ceiling(ours),
      "token_concat_train_ceiling": ceiling(token) if token else None,
      "train_at_their_matmul": at_their_matmul(ours),
      "token_concat_train_at_their_matmul": at_their_matmul(token) if token else None,
      "train_samples_per_s": ours["train"]["samples_per_s"] / tt["samples_per_s"],
      "adaln_block_train_samples_per_s": (block["train"]["samples_per_s"]
                                          / tt["samples_per_s"] if block else None),
      "adaln_block_params": block["train"]["params"] / theirs["params"] if block else None,
      "per_token_train_samples_per_s": (per_token["train"]["samples_per_s"]
                                        / tt["samples_per_s"] if per_token else None),
      "per_token_params": (per_token["train"]["params"] / theirs["params"]
                           if per_token else None),
      "per_token_denoise_speedup": (theirs["denoise"]["seconds_median"]
                                    / per_token["denoise"]["seconds_median"]
                                    if per_token else None),
      "params": ours["train"]["params"] / theirs["params"],
      "token_concat_train_samples_per_s": (token["train"]["samples_per_s"]
                                           / tt["samples_per_s"] if token else None),
      "denoise_speedup": theirs["denoise"]["seconds_median"]
                         / ours["denoise"]["seconds_median"],
      "flops_per_example": (ours["model_flops_per_example"] / their_flops
                            if their_flops else None),
      "their_matmul_fraction": matmul_fraction(their_flops, tt["samples_per_s"],
                                               theirs["matmul"]["gflops_per_s"]),
  }


def measure_ours(dit_config: ml_collections.ConfigDict, *, quick: bool, repeats: int,
                 train_steps: int, matmul_size: int, denoise_repeats: int,
                 default_cnn: dict | None, default_image_size: int, seed: int = 0,
                 dtype: str = "float32", targets_only: bool = False) -> dict:
  """Our side: ``dit_bench.measure_cifar`` in ``dtype``, the train step with the token-concat
  conditioning (``token_concat``) and with DiT's adaLN per block (``adaln_block``; our
  default at this size is adaLN-single), the train step and the denoising call with a map
  per token position (``per_token``; when the size's default is another token
  projection), and the one-net default figure. ``targets_only``: the first two only (what
  the ratios of ``ROUND_KEYS`` need)."""
  size = dit_bench.QUICK_SIZE if quick else dit_bench.CIFAR_SIZE
  ours = dit_bench.measure_cifar(size, dit_config, dtype=dtype, repeats=repeats,
                                 train_steps=train_steps, matmul_size=matmul_size,
                                 denoise_repeats=denoise_repeats, seed=seed)
  ours["token_concat"] = dit_bench.measure_train(
      dataclasses.replace(size, conditioning="token"), dit_config, dtype=dtype,
      repeats=repeats, train_steps=train_steps, matmul=ours["matmul"][dtype], seed=seed)
  if targets_only:
    return ours
  ours["adaln_block"] = dit_bench.measure_train(
      dataclasses.replace(size, adaln="block"), dit_config, dtype=dtype,
      repeats=repeats, train_steps=train_steps, matmul=ours["matmul"][dtype], seed=seed)
  if size.token_proj != "per_token":
    ours["per_token"] = dit_bench.measure_train_and_denoise(
        dataclasses.replace(size, token_proj="per_token"), dit_config, dtype=dtype,
        repeats=repeats, train_steps=train_steps, matmul=ours["matmul"][dtype],
        denoise_repeats=denoise_repeats, seed=seed)
  ours["generate_default"] = dit_bench.bench_default_generation(
      dit_config, default_cnn or (dit_bench.QUICK_CNN if quick else dit_bench.CNN19K),
      image_size=default_image_size, repeats=denoise_repeats, seed=seed,
      encode_text=not quick)
  return ours


def run(t2w_repo: str, dit_config: ml_collections.ConfigDict, *,
        torch_python: str | None = None, threads: int | None = None, quick: bool = False,
        repeats: int | None = None, train_steps: int | None = None,
        matmul_size: int | None = None, default_cnn: dict | None = None,
        default_image_size: int = 16, seed: int = 0, timeout: float = 3600,
        dtype: str = "float32", rounds: int = 1) -> dict:
  """The side-by-side benchmark: the PyTorch side first (it fails fast on a bad checkout),
  then ours, on the same machine; with ``rounds`` > 1, again in alternating order.

  One run of each side moves by several percent on a small CPU (other load, clocks), so a
  single pair of runs can put a ratio on either side of a target. Each further round times
  both sides again (the figures of ``ROUND_KEYS`` only), ours first in odd rounds and
  theirs first in even ones, so that a drift of the machine during the run favours
  neither; the targets are then judged on each ratio's median over the rounds
  (``summarise_rounds``). The first round is the full report.

  Args:
    t2w_repo: path of a checkout of the PyTorch T2W.
    dit_config: our DiT config (configs/dit.py "small"; "tiny" with quick): the one-net
      figure's generator, and the optimiser of our timed train step.
    torch_python: the interpreter with torch (default: this one).
    threads: torch's intra-op threads (default: the CPU count; XLA uses every core).
    quick: tiny sizes on both sides, one repeat (a smoke test of the path).
    repeats: timed repeats (default 3; 1 with quick).
    train_steps: train steps per timed repeat (default 2 on CPU, 20 elsewhere; 1 quick).
    matmul_size: n of both matmuls (default 2048 on CPU, 8192 elsewhere; 256 quick).
    default_cnn: the default corpus's subtask net for the one-net figure (see
      ``dit_bench.run``).
    default_image_size: the default corpus's image size.
    seed: data and parameter seed of both sides.
    timeout: seconds the PyTorch side may take.
    dtype: "float32" or "bfloat16", both sides (module docstring).
    rounds: how many times both sides are timed (at least 1).

  Returns:
    JSON-ready results (see ``format_report``); with torch, "rounds" holds each round's
    figures and ratios and "medians" each ratio's median and range over them.

  Raises:
    MissingError, ConfigError: a bad checkout or interpreter (see ``run_torch_side``).
    ConfigError: ``rounds`` below 1.
  """
  if rounds < 1:
    raise ConfigError(f"--rounds must be at least 1, got {rounds}")
  repo = check_t2w_repo(t2w_repo)
  python = check_python(torch_python or sys.executable)
  on_cpu = jax.default_backend() == "cpu"
  repeats = repeats or (1 if quick else 3)
  train_steps = train_steps or (1 if quick else 2 if on_cpu else 20)
  matmul_size = matmul_size or (256 if quick else harness.default_matmul_size())
  denoise_repeats = max(repeats, 1 if quick else 10)
  threads = threads or os.cpu_count() or 1
  cfg = PYTORCH_QUICK if quick else PYTORCH_CIFAR
  date = harness.utc_now()

  def time_theirs():
    return run_torch_side(repo, python, cfg, repeats=repeats, train_steps=train_steps,
                          denoise_repeats=denoise_repeats, threads=threads,
                          matmul_size=matmul_size, seed=seed, timeout=timeout, dtype=dtype)

  def time_ours(targets_only):
    return measure_ours(dit_config, quick=quick, repeats=repeats, train_steps=train_steps,
                        matmul_size=matmul_size, denoise_repeats=denoise_repeats,
                        default_cnn=default_cnn, default_image_size=default_image_size,
                        seed=seed, dtype=dtype, targets_only=targets_only)

  theirs = time_theirs()
  theirs.update(checkout=repo, checkout_commit=harness.git_commit(repo), config=cfg)
  ours = time_ours(False)
  ours.update(commit=harness.git_commit(ROOT), machine=harness.machine_info())
  result = {"benchmark": "pytorch", "date": date, "quick": quick, "ours": ours,
            "theirs": theirs, "comparison": None}
  if theirs["status"] != "ok":
    return result
  result["comparison"] = compare(ours, theirs)
  result["rounds"] = [round_figures(ours, theirs, result["comparison"], ours_first=False)]
  for i in range(1, rounds):
    ours_first = i % 2 == 1
    if ours_first:
      o = time_ours(True)
      t = time_theirs()
    else:
      t = time_theirs()
      o = time_ours(True)
    result["rounds"].append(round_figures(o, t, compare(o, t), ours_first=ours_first))
  result["medians"] = summarise_rounds(result["rounds"])
  return result


# The ratios timed again in every round, and judged on their median over the rounds.
ROUND_KEYS = ("train_samples_per_s", "token_concat_train_samples_per_s", "denoise_speedup")


def round_figures(ours: dict, theirs: dict, comparison: dict, *, ours_first: bool) -> dict:
  """One round's timings of both sides and its ratios of ``ROUND_KEYS``."""
  dtype = ours["train"]["dtype"]
  return {
      "ours_first": ours_first,
      "ours": {"train_samples_per_s": ours["train"]["samples_per_s"],
               "token_concat_train_samples_per_s":
                   ours["token_concat"]["train"]["samples_per_s"],
               "denoise_seconds": ours["denoise"]["seconds_median"],
               "matmul_gflops_per_s": ours["matmul"][dtype]["gflops_per_s"]},
      "theirs": {"train_samples_per_s": theirs["train"]["samples_per_s"],
                 "denoise_seconds": theirs["denoise"]["seconds_median"],
                 "matmul_gflops_per_s": theirs["matmul"]["gflops_per_s"]},
      "ratios": {k: comparison[k] for k in ROUND_KEYS},
  }


def summarise_rounds(rounds: list[dict]) -> dict:
  """Each ratio of ``ROUND_KEYS``: its median, min and max over the rounds."""
  out = {}
  for k in ROUND_KEYS:
    xs = [r["ratios"][k] for r in rounds]
    out[k] = {"median": harness.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}
  return out


def _ms(seconds: float) -> str:
  return f"{1e3 * seconds:.4g} ms"


def _their_precision(dtype: str) -> str:
  return "float32" if dtype == "float32" else f"forwards under torch.autocast({dtype})"


# The CPU targets, as (what, comparison key, bound, "min" (at least) or "max" (at most),
# the comparison key prefix of its ceilings or None).
TARGETS = (("token-concat (equal work) train samples/s vs PyTorch",
            "token_concat_train_samples_per_s", 1.2, "min", "token_concat_train"),
           ("default (prior attention) train samples/s vs PyTorch", "train_samples_per_s",
            1.0, "min", "train"),
           ("batch-1 denoising call vs PyTorch", "denoise_speedup", 1.0, "min", None),
           ("default parameters vs PyTorch", "params", 1.2, "max", None))


def target_lines(ours: dict, comparison: dict | None, quick: bool = False,
                 medians: dict | None = None) -> list[str]:
  """One line per target of ``TARGETS``: its figure and met / NOT met (on a CPU at the
  CIFAR size only: not with quick). A ratio in ``medians`` (``summarise_rounds``) of more
  than one round is judged on its median, and its range is given; the bounds in brackets
  are the first round's."""
  if quick or ours["machine"]["backend"] != "cpu":
    return []
  lines = []
  for what, key, bar, kind, ceiling_key in TARGETS:
    value = (comparison or {}).get(key)
    if value is None:
      continue
    spread = (medians or {}).get(key)
    if spread and spread["n"] > 1:
      value = spread["median"]
      figure = (f"{value:.4g}x (median of {spread['n']} rounds, "
                f"{spread['min']:.3g}x-{spread['max']:.3g}x)")
    else:
      figure = f"{value:.4g}x"
    met = value >= bar if kind == "min" else value <= bar
    ceiling = (comparison or {}).get(f"{ceiling_key}_ceiling") if ceiling_key else None
    swapped = (comparison or {}).get(f"{ceiling_key}_at_their_matmul") if ceiling_key else None
    lines.append(f"target: {what} {'>=' if kind == 'min' else '<='} {bar:g}x: {figure}, "
                 f"{'met' if met else 'NOT met'}"
                 + (f" (at 100 % of this run's {ours['train']['dtype']} matmul it would be "
                    f"{ceiling:.3g}x" if ceiling else "")
                 + (f"; with its products at torch's matmul rate, the rest unchanged, "
                    f"{swapped:.3g}x" if ceiling and swapped else "")
                 + (")" if ceiling else ""))
  return lines


def rounds_lines(rounds: list[dict]) -> list[str]:
  """The table of every round's timings and ratios (nothing for a single round)."""
  if len(rounds) < 2:
    return []
  rows = []
  for i, r in enumerate(rounds):
    o, t, q = r["ours"], r["theirs"], r["ratios"]
    rows.append([i + 1, "ours" if r["ours_first"] else "theirs",
                 f"{o['train_samples_per_s']:.4g} / {t['train_samples_per_s']:.4g}",
                 f"{q['train_samples_per_s']:.3g}x",
                 f"{q['token_concat_train_samples_per_s']:.3g}x",
                 f"{1e3 * o['denoise_seconds']:.4g} / {1e3 * t['denoise_seconds']:.4g}",
                 f"{q['denoise_speedup']:.3g}x",
                 f"{o['matmul_gflops_per_s']:.4g} / {t['matmul_gflops_per_s']:.4g}"])
  return ["", "Every round (the first is the table above; later rounds alternate which "
              "side runs first):",
          harness.format_table(
              ["round", "first", "train samples/s, ours / theirs", "train ratio",
               "token-concat ratio", "batch-1 call ms, ours / theirs", "batch-1 speedup",
               "matmul GFLOP/s, ours / theirs"], rows)]


def _describe_theirs(t: dict) -> str:
  c, tr = t["config"], t["train"]
  return (f"PyTorch T2W train step (training_losses x0 MSE + backward + clipping + AdamW; no "
          f"discriminator or EMA): GPT width {c['n_embd']}, {c['n_layer']} layers, "
          f"{c['n_head']} heads, {t['num_tokens']} tokens ({c['chunk_size']}-value chunks "
          f"within layers, D={t['D']}; text and timestep as tokens), {t['params'] / 1e6:.1f} M "
          f"params, {_their_precision(t.get('dtype', 'float32'))}, batch {tr['batch_size']}; "
          f"torch {t['torch_version']} on "
          f"{t['device']}, {t['threads']} thread(s); median of {len(tr['seconds'])} x "
          f"{tr['steps_per_repeat']} step(s)")


def format_report(r: dict) -> str:
  """The printed report: both sides' figures and ratios, or ours alone without torch."""
  o, t, q = r["ours"], r["theirs"], r["comparison"]
  dtype = o["train"]["dtype"]
  mm = o["matmul"][dtype]
  token = o.get("token_concat")
  block = o.get("adaln_block")
  per_token = o.get("per_token")
  lines = [
      "Side by side: t2w_jax and the PyTorch T2W, same machine, same run"
      + (" (--quick: tiny sizes, a smoke test only)" if r["quick"] else ""),
      f"date: {r['date']}; machine: {harness.describe_machine(o['machine'])}",
      f"t2w_jax: {harness.describe_commit(o['commit'])}",
  ]
  if t["status"] != "ok":
    lines += [
        f"PyTorch T2W: not timed: torch is not importable by {t['python']} ({t['reason']}). "
        f"Install torch into that Python (an optional extra, not needed by t2w_jax or its "
        f"tests) or pass --torch_python; t2w_jax's figures only.",
        dit_bench.describe_cifar_step(o),
        "",
        harness.format_table(
            [f"figure ({dtype})", "t2w_jax"],
            [["train samples/s", o["train"]["samples_per_s"]]]
            + ([["train samples/s, token-concat (their conditioning)",
                 token["train"]["samples_per_s"]]] if token else [])
            + [["one denoising call, batch 1", _ms(o["denoise"]["seconds_median"])]]),
        "",
        dit_bench.describe_mfu(o),
    ]
  else:
    tt, td = t["train"], t["denoise"]
    their_flops = tt["flops_per_example"]
    ot = o["train"]
    lines += [
        f"PyTorch T2W: {t['checkout']}, {harness.describe_commit(t['checkout_commit'])}"
        + (f"; patched: {'; '.join(t['patched'])}" if t["patched"] else ""),
        f"t2w_jax {dit_bench.describe_cifar_step(o)}",
        _describe_theirs(t),
        "",
        harness.format_table(
            [f"figure ({dtype})", "t2w_jax", "PyTorch T2W", "t2w_jax vs PyTorch"],
            [["train samples/s", ot["samples_per_s"], tt["samples_per_s"],
              f"{q['train_samples_per_s']:.3g}x"]]
            + ([["train samples/s, token-concat (their conditioning)",
                 token["train"]["samples_per_s"], tt["samples_per_s"],
                 f"{q['token_concat_train_samples_per_s']:.3g}x"]] if token else [])
            + ([["train samples/s, adaLN per block (DiT's)", block["train"]["samples_per_s"],
                 tt["samples_per_s"], f"{q['adaln_block_train_samples_per_s']:.3g}x"],
                ["params, adaLN per block (DiT's)", f"{block['train']['params'] / 1e6:.1f} M",
                 f"{t['params'] / 1e6:.1f} M", f"{q['adaln_block_params']:.3g}x"]]
               if block else [])
            + ([["train samples/s, a map per token position",
                 per_token["train"]["samples_per_s"], tt["samples_per_s"],
                 f"{q['per_token_train_samples_per_s']:.3g}x"],
                ["params, a map per token position",
                 f"{per_token['train']['params'] / 1e6:.1f} M", f"{t['params'] / 1e6:.1f} M",
                 f"{q['per_token_params']:.3g}x"],
                ["one denoising call, batch 1, a map per token position",
                 _ms(per_token["denoise"]["seconds_median"]), _ms(td["seconds_median"]),
                 f"{q['per_token_denoise_speedup']:.3g}x faster"]]
               if per_token else [])
            + [
             ["one denoising call, batch 1", _ms(o["denoise"]["seconds_median"]),
              _ms(td["seconds_median"]), f"{q['denoise_speedup']:.3g}x faster"],
             ["1000-step DDPM per net (1000 calls)",
              f"{1000 * o['denoise']['seconds_median'] / 60:.3g} min",
              f"{1000 * td['seconds_median'] / 60:.3g} min", ""],
             ["params", f"{ot['params'] / 1e6:.1f} M", f"{t['params'] / 1e6:.1f} M",
              f"{q['params']:.3g}x"],
             ["train FLOPs/example", f"{o['model_flops_per_example'] / 1e9:.4g} G",
              "not counted" if not their_flops else f"{their_flops / 1e9:.4g} G",
              "" if q["flops_per_example"] is None else f"{q['flops_per_example']:.3g}x"],
             [f"{mm['n']}^3 {dtype} matmul, same run", f"{mm['gflops_per_s']:.4g} GFLOP/s",
              f"{t['matmul']['gflops_per_s']:.4g} GFLOP/s", ""],
             ["train step / that matmul", f"{100 * o['mfu']:.1f} %",
              "" if q["their_matmul_fraction"] is None
              else f"{100 * q['their_matmul_fraction']:.1f} %", ""]]
            + ([["token-concat step / that matmul", f"{100 * token['mfu']:.1f} %", "", ""]]
               if token else [])),
        "FLOPs: ours from models.model_flops_per_example, theirs from "
        "torch.utils.flop_counter on one step; each fraction is over its own library's "
        "matmul.",
    ]
  lines += rounds_lines(r.get("rounds") or [])
  lines += ["", *target_lines(o, q, r["quick"], r.get("medians"))]
  lines += ["", *dit_bench.describe_default_generation(
      o["generate_default"], o["machine"]["backend"], r["quick"])]
  return "\n".join(lines)

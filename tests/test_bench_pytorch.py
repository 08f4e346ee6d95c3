"""The side-by-side benchmark (launch/bench.py pytorch): its arithmetic, its report, and its
paths without torch, with a checkout that is not one, and with a checkout that lacks the
model. No DiT at the CIFAR size runs here: our side is replaced by fixed figures, and the
PyTorch side is the real driver subprocess under a Python whose torch is hidden or faked.

With T2W_TORCH_PYTHON (a Python with torch) and T2W_REPO (a checkout of the PyTorch T2W)
set, ``test_quick_side_by_side_with_torch`` also runs the whole path at tiny sizes.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from benchmarks import dit_bench, pytorch_bench
from configs import dit as dit_config
from t2w_jax.errors import ConfigError, MissingError
from t2w_jax.models import model_flops_per_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ours(samples_per_s=6.4, denoise_s=0.1, flops=21e9, mfu=0.5):
  """A fixed result of ``pytorch_bench.measure_ours`` (machine and commit included)."""
  return {
      "size": {"width": 1024, "depth": 6, "num_heads": 8, "mlp_ratio": 4.0, "block_size": 576,
               "num_tokens": 34, "batch_size": 32, "text_dim": 512, "max_classes": 32},
      "matmul": {"float32": {"n": 2048, "dtype": "float32", "devices": 1, "seconds": 0.1,
                             "gflops_per_s": 150.0, "gflops_per_s_per_device": 150.0}},
      "train": {"dtype": "float32", "batch_size": 32, "devices": 1, "params": 95e6,
                "compile_seconds": 20.0, "steps_per_repeat": 2, "seconds": [10.0, 10.0],
                "seconds_per_step": 32 / samples_per_s, "samples_per_s": samples_per_s,
                "final_loss": 1.0, "xla_flops_per_example": flops},
      "denoise": {"batch_size": 1, "seconds": [denoise_s], "seconds_median": denoise_s},
      "model_flops_per_example": flops, "achieved_gflops_per_s": flops * samples_per_s / 1e9,
      "mfu": mfu, "mfu_peak": "matmul 2048^3 float32",
      "generate_default": {
          "sampler": "ddim", "steps": 1, "guidance": 1.0, "num_tokens": 10, "D": 2328,
          "block_size": 512, "params": 1e6, "width": 64, "depth": 3, "text": "a and b",
          "sampler_seconds": [0.002], "sampler_seconds_median": 0.002,
          "generate_seconds": [0.012], "generate_seconds_median": 0.012,
          "generate_skipped": ""},
      "token_concat": {
          "train": {"dtype": "float32", "samples_per_s": 2 * samples_per_s},
          "model_flops_per_example": flops / 2, "mfu": mfu},
      "adaln_block": {
          "train": {"dtype": "float32", "samples_per_s": 1.5 * samples_per_s,
                    "params": 96e6},
          "model_flops_per_example": flops, "mfu": mfu},
      "per_token": {
          "train": {"dtype": "float32", "samples_per_s": 0.5 * samples_per_s,
                    "params": 120e6},
          "denoise": {"batch_size": 1, "seconds": [2 * denoise_s],
                      "seconds_median": 2 * denoise_s},
          "model_flops_per_example": flops, "mfu": mfu},
      "commit": {"commit": "0123456789abcdef", "dirty": False},
      "machine": {"cpu": "Test CPU", "cpu_cores": 2, "jax_version": "0", "backend": "cpu",
                  "num_devices": 1, "device_kind": "cpu", "xla_flags": ""},
  }


def _theirs(samples_per_s=3.2, denoise_s=1.0, flops=7e9, matmul_gflops=100.0):
  """A fixed "ok" result of the torch driver, as ``run`` completes it."""
  return {
      "status": "ok", "python": "/x/python", "torch_version": "2.0", "device": "cpu",
      "threads": 2, "patched": ["FrequencyEmbedder.forward: .to('cuda') -> the input's device"],
      "params": 80e6, "num_tokens": 34, "D": 17248,
      "train": {"batch_size": 32, "steps_per_repeat": 2, "seconds": [20.0],
                "seconds_per_step": 32 / samples_per_s, "samples_per_s": samples_per_s,
                "final_loss": 1.0, "flops_per_example": flops},
      "denoise": {"batch_size": 1, "seconds": [denoise_s], "seconds_median": denoise_s},
      "matmul": {"n": 2048, "dtype": "float32", "seconds": 0.2,
                 "gflops_per_s": matmul_gflops},
      "checkout": "/src/T2W", "checkout_commit": {"commit": "fedcba9876543210", "dirty": True},
      "config": pytorch_bench.PYTORCH_CIFAR,
  }


def _fake_checkout(root, transformer_source=""):
  """A directory with the files a T2W checkout must have (their contents given)."""
  for rel in pytorch_bench.REQUIRED_FILES:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(transformer_source if rel.endswith("transformer.py") else "")
  for pkg in ("T2W", "T2W/models"):
    (root / pkg / "__init__.py").write_text("")
  return str(root)


def _python_with_torch(tmp_path, monkeypatch, torch_init):
  """Puts a package ``torch`` with the given __init__ first on the subprocesses' path."""
  shadow = tmp_path / "shadow"
  (shadow / "torch").mkdir(parents=True)
  (shadow / "torch" / "__init__.py").write_text(torch_init)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(shadow)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def test_compare_on_fixed_numbers():
  q = pytorch_bench.compare(_ours(), _theirs())
  assert q["train_samples_per_s"] == pytest.approx(6.4 / 3.2)
  assert q["token_concat_train_samples_per_s"] == pytest.approx(12.8 / 3.2)
  assert q["denoise_speedup"] == pytest.approx(1.0 / 0.1)
  assert q["flops_per_example"] == pytest.approx(3.0)
  assert q["adaln_block_train_samples_per_s"] == pytest.approx(9.6 / 3.2)
  assert q["adaln_block_params"] == pytest.approx(96e6 / 80e6)
  assert q["params"] == pytest.approx(95e6 / 80e6)
  assert q["per_token_train_samples_per_s"] == pytest.approx(3.2 / 3.2)
  assert q["per_token_params"] == pytest.approx(120e6 / 80e6)
  assert q["per_token_denoise_speedup"] == pytest.approx(1.0 / 0.2)
  report = pytorch_bench.format_report(dict(
      ours=_ours(), theirs=_theirs(), comparison=q, quick=False, date="2026-01-01"))
  assert "params, a map per token position | 120.0 M" in report
  # The ceilings: 150 GFLOP/s over the step's FLOPs per example, over their 3.2 samples/s.
  assert q["train_ceiling"] == pytest.approx(150e9 / 21e9 / 3.2)
  assert q["token_concat_train_ceiling"] == pytest.approx(150e9 / 10.5e9 / 3.2)
  # With their 100 GFLOP/s matmul instead of our 150, the rest of the step unchanged:
  # 1/12.8 s per example less 10.5 GFLOP at 150 GFLOP/s plus 10.5 GFLOP at 100.
  swapped = 1 / (1 / 12.8 - 10.5 / 150 + 10.5 / 100) / 3.2
  assert q["token_concat_train_at_their_matmul"] == pytest.approx(swapped)
  assert q["train_at_their_matmul"] == pytest.approx(1 / (1 / 6.4 - 21 / 150 + 21 / 100) / 3.2)
  assert (f"{q['token_concat_train_samples_per_s']:.4g}x, met (at 100 % of this run's "
          f"float32 matmul it would be {150 / 10.5 / 3.2:.3g}x; with its products at "
          f"torch's matmul rate, the rest unchanged, {swapped:.3g}x)") in report
  # 7 GFLOP/example x 3.2 examples/s over a 100 GFLOP/s matmul.
  assert q["their_matmul_fraction"] == pytest.approx(0.224)
  assert pytorch_bench.matmul_fraction(None, 3.2, 100.0) is None
  q = pytorch_bench.compare(_ours(), _theirs(flops=None))
  assert q["flops_per_example"] is None and q["their_matmul_fraction"] is None


def test_report_with_torch_on_fixed_numbers():
  r = {"benchmark": "pytorch", "date": "2026-12-01T12:00:00+00:00", "quick": False,
       "ours": _ours(), "theirs": _theirs()}
  r["comparison"] = pytorch_bench.compare(r["ours"], r["theirs"])
  text = pytorch_bench.format_report(r)
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in text.splitlines() if line.startswith("| ")}
  assert rows["train samples/s"] == ["6.4", "3.2", "2x"]
  assert rows["train samples/s, token-concat (their conditioning)"] == ["12.8", "3.2", "4x"]
  assert rows["one denoising call, batch 1"] == ["100 ms", "1000 ms", "10x faster"]
  assert rows["1000-step DDPM per net (1000 calls)"] == ["1.67 min", "16.7 min", ""]
  assert rows["train FLOPs/example"] == ["21 G", "7 G", "3x"]
  assert rows["train samples/s, adaLN per block (DiT's)"] == ["9.6", "3.2", "3x"]
  assert rows["params, adaLN per block (DiT's)"] == ["96.0 M", "80.0 M", "1.2x"]
  assert rows["train step / that matmul"] == ["50.0 %", "22.4 %", ""]
  for needle in ("2026-12-01T12:00:00+00:00", "commit 0123456789ab", "/src/T2W",
                 "commit fedcba987654 with local changes", "patched: FrequencyEmbedder",
                 "one net at the default config", "12 ms (text to weights",
                 "<= 50 ms on the project's 2-core CPU: met",
                 "default (prior attention) train samples/s vs PyTorch >= 1x: 2x, met",
                 "token-concat (equal work) train samples/s vs PyTorch >= 1.2x: 4x, met",
                 "batch-1 denoising call vs PyTorch >= 1x: 10x, met",
                 "default parameters vs PyTorch <= 1.2x: 1.188x, met"):
    assert needle in text, needle
  json.dumps(r)  # JSON-ready


def test_token_concat_size_switches_the_conditioning_and_its_flops():
  token = dataclasses.replace(dit_bench.CIFAR_SIZE, conditioning="token")
  assert token.dit_switches() == dict(cond_adaln=False, cross_attention=False,
                                      prior_bias=False, text_as_token=True, adaln="single",
                                      token_proj=dit_bench.CIFAR_SIZE.token_proj,
                                      token_proj_rank=dit_bench.CIFAR_SIZE.token_proj_rank)
  assert dit_bench.CIFAR_SIZE.dit_switches()["cross_attention"]
  prior_flops = model_flops_per_example(dit_bench.CIFAR_SIZE.flops_config())
  token_flops = model_flops_per_example(token.flops_config())
  assert token_flops < prior_flops  # no cross-attention to 33 class tokens
  with pytest.raises(ValueError, match="conditioning"):
    dataclasses.replace(token, conditioning="concat").dit_switches()


def test_one_net_target_is_held_on_cpu_only():
  g = dict(_ours()["generate_default"], generate_seconds_median=0.07)
  assert "NOT met" in "\n".join(dit_bench.describe_default_generation(g, "cpu"))
  assert "target" not in "\n".join(dit_bench.describe_default_generation(g, "gpu"))
  assert "target" not in "\n".join(dit_bench.describe_default_generation(g, "cpu", True))
  g = dict(g, generate_seconds_median=None, generate_skipped="no MiniLM")
  sec, what = dit_bench.one_net_seconds(g)
  assert sec == 0.002 and what.startswith("sampler alone")


def test_without_torch_reports_our_figures_only(tmp_path, monkeypatch):
  """The real driver under a Python whose ``import torch`` fails; our side is fixed."""
  _python_with_torch(tmp_path, monkeypatch, "raise ImportError('simulated: no torch here')")
  monkeypatch.setattr(pytorch_bench, "measure_ours", lambda *a, **k: _ours())
  repo = _fake_checkout(tmp_path / "T2W")
  r = pytorch_bench.run(repo, dit_config.get_config("tiny"), torch_python=sys.executable,
                        quick=True)
  t = r["theirs"]
  assert t["status"] == "no_torch" and "simulated: no torch here" in t["reason"]
  assert t["checkout_commit"] == {"commit": None, "dirty": None}
  assert r["comparison"] is None
  text = pytorch_bench.format_report(r)
  assert "not timed: torch is not importable" in text and "simulated" in text
  assert "PyTorch T2W |" not in text and "x faster" not in text
  assert "train samples/s | 6.4 |" in text and "MFU 50.0%" in text
  assert "one net at the tiny config (--quick)" in text
  json.dumps(r)


def test_checkout_without_the_model_is_named(tmp_path, monkeypatch):
  """An importable (fake) torch, and a checkout whose transformer.py lacks class T2W."""
  _python_with_torch(tmp_path, monkeypatch, "")
  repo = _fake_checkout(tmp_path / "T2W", "class FrequencyEmbedder:\n  pass\n")
  with pytest.raises(MissingError, match=r"could not import T2W\.models\.transformer\.T2W"):
    pytorch_bench.run_torch_side(repo, sys.executable, pytorch_bench.PYTORCH_QUICK,
                                 repeats=1, train_steps=1, denoise_repeats=1, threads=1,
                                 matmul_size=8)


def test_bad_t2w_repo_and_python_are_user_errors(tmp_path):
  with pytest.raises(MissingError, match="is not a directory"):
    pytorch_bench.check_t2w_repo(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(MissingError, match="T2W/models/transformer.py"):
    pytorch_bench.check_t2w_repo(str(tmp_path / "empty"))
  assert pytorch_bench.check_t2w_repo(_fake_checkout(tmp_path / "T2W")) == str(tmp_path / "T2W")
  with pytest.raises(MissingError, match="--torch_python"):
    pytorch_bench.check_python(str(tmp_path / "no_python"))


def test_cli_bad_t2w_repo_is_one_line_exit_2(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "bench.py"), "pytorch",
                         "--t2w_repo", str(tmp_path / "nowhere")], capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --t2w_repo")
  assert "nowhere" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("T2W_TORCH_PYTHON") and os.environ.get("T2W_REPO")),
                    reason="needs T2W_TORCH_PYTHON (a Python with torch) and T2W_REPO")
def test_quick_side_by_side_with_torch():
  r = pytorch_bench.run(os.environ["T2W_REPO"], dit_config.get_config("tiny"),
                        torch_python=os.environ["T2W_TORCH_PYTHON"], quick=True, rounds=2)
  t, q = r["theirs"], r["comparison"]
  assert [x["ours_first"] for x in r["rounds"]] == [False, True]
  assert r["medians"]["denoise_speedup"]["n"] == 2
  assert t["status"] == "ok" and t["num_tokens"] == 44 and t["D"] == 148
  assert t["train"]["samples_per_s"] > 0 and t["denoise"]["seconds_median"] > 0
  assert q["train_samples_per_s"] == pytest.approx(
      r["ours"]["train"]["samples_per_s"] / t["train"]["samples_per_s"])
  assert "t2w_jax vs PyTorch" in pytorch_bench.format_report(r)


def test_cifar_size_is_the_base_config():
  """The side-by-side times our "base" DiT: the two must not drift apart."""
  from configs import dit as dit_config
  m = dit_config.get_config("base").model
  s = dit_bench.CIFAR_SIZE
  assert (s.width, s.depth, s.num_heads, s.mlp_ratio, s.adaln, s.token_proj) == (
      m.width, m.depth, m.num_heads, m.mlp_ratio, m.adaln, m.token_proj)
  if m.token_proj == "low_rank":
    assert s.token_proj_rank == m.token_proj_rank
  assert s.block_size == dit_config.get_config("base").block_size


def test_rounds_alternate_and_judge_the_targets_on_medians(tmp_path, monkeypatch):
  """Three rounds of fixed figures: the order alternates after the first round, later
  rounds time only what the ratios need, and each target is judged on its median."""
  calls = []
  their_rates = iter([3.2, 8.0, 6.4])  # train ratios 2x, 0.8x, 1x: median 1x, met
  our_denoise = iter([0.1, 2.0, 0.5])  # batch-1 speedups 10x, 0.5x, 2x: median 2x

  def fake_theirs(*args, **kwargs):
    calls.append("theirs")
    return _theirs(samples_per_s=next(their_rates))

  def fake_ours(*args, targets_only=False, **kwargs):
    calls.append(("ours", targets_only))
    o = _ours(denoise_s=next(our_denoise))
    if targets_only:
      for k in ("adaln_block", "per_token", "generate_default"):
        del o[k]
    return o

  monkeypatch.setattr(pytorch_bench, "run_torch_side", fake_theirs)
  monkeypatch.setattr(pytorch_bench, "measure_ours", fake_ours)
  repo = _fake_checkout(tmp_path / "T2W")
  r = pytorch_bench.run(repo, dit_config.get_config("tiny"), torch_python=sys.executable,
                        rounds=3)
  assert calls == ["theirs", ("ours", False), ("ours", True), "theirs", "theirs",
                   ("ours", True)]
  assert [x["ours_first"] for x in r["rounds"]] == [False, True, False]
  m = r["medians"]
  assert m["train_samples_per_s"] == {"median": pytest.approx(1.0), "min": pytest.approx(0.8),
                                      "max": pytest.approx(2.0), "n": 3}
  assert m["denoise_speedup"]["median"] == pytest.approx(2.0)
  assert m["token_concat_train_samples_per_s"]["median"] == pytest.approx(2.0)
  # The first round is the full report.
  assert r["comparison"]["train_samples_per_s"] == pytest.approx(2.0)
  text = pytorch_bench.format_report(r)
  assert ("default (prior attention) train samples/s vs PyTorch >= 1x: 1x (median of 3 "
          "rounds, 0.8x-2x), met") in text
  assert "batch-1 denoising call vs PyTorch >= 1x: 2x (median of 3 rounds, 0.5x-10x)" in text
  rows = [line for line in text.splitlines() if line.startswith("| 2 ")]
  assert rows == ["| 2 | ours | 6.4 / 8 | 0.8x | 1.6x | 2000 / 1000 | 0.5x | 150 / 100 |"]
  json.dumps(r)


def test_rounds_below_one_is_a_user_error(tmp_path):
  with pytest.raises(ConfigError, match="--rounds must be at least 1, got 0"):
    pytorch_bench.run(_fake_checkout(tmp_path / "T2W"), dit_config.get_config("tiny"),
                      rounds=0)

"""Smoke tests of the benchmarks (launch/bench.py) in --quick mode.

No timing assertions: the CPU is shared, so only the presence and consistency of the
reported figures, and the device set-up of each side, are checked.
"""
import ast
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import launch_env
from benchmarks import corpus_bench, dit_bench
from configs import corpus as corpus_config
from configs import dit as dit_config
from t2w_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarks_live_outside_the_library():
  """The drivers are a top-level package the library never imports: t2w_jax has no bench
  package, and no module of t2w_jax imports ``benchmarks``."""
  assert not pathlib.Path(ROOT, "t2w_jax", "bench").exists()
  for path in pathlib.Path(ROOT, "t2w_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.split(".")[0] == "benchmarks" for n in names), path


def test_baseline_env_drops_host_device_flags_only():
  env = corpus_bench.baseline_env({
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"
                   " intra_op_parallelism_threads=1 --xla_dump_to=/tmp/x",
      "PYTHONPATH": "/elsewhere"})
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
  assert env["PYTHONPATH"].split(os.pathsep) == [ROOT, "/elsewhere"]
  env = corpus_bench.baseline_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert "XLA_FLAGS" not in env


def test_settings_round_trip_and_errors():
  s = corpus_bench.settings_from_config(corpus_config.get_config(""), quick=True, nets=6,
                                       steps=None)
  assert s.nets == 6 and s.steps == 4 and s.data == "synthetic" and s.conv_impl == "im2col"
  assert corpus_bench.Settings.from_json(json.loads(json.dumps(s.to_json()))) == s
  with pytest.raises(KeyError, match="no_such_field"):
    corpus_bench.Settings.from_json(dict(s.to_json(), no_such_field=1))
  with pytest.raises(ValueError, match="data"):
    corpus_bench.Settings(data="imagenet")
  with pytest.raises(ValueError, match="steps"):
    corpus_bench.Settings(steps=0)


def test_small_generator_matches_cnn19k():
  """The DDIM-50 figures' small config: the 18,704-value CNN in 512-value tokens (41 of
  them: blocks never cross the 8 parameters) at the config's DiT size."""
  config = dit_config.get_config("small")
  gen = dit_bench.small_generator(config, dit_bench.CNN19K)
  assert gen.spec.layout.total == 18704
  assert gen.spec.tokenizer.token_shape == (41, 512) and config.block_size == 512
  assert gen.config["model"]["width"] == config.model.width
  assert gen.config["model"]["depth"] == config.model.depth


@pytest.mark.slow
def test_corpus_bench_cli_quick(tmp_path, slowness):
  """Trainer on one single-threaded device per core; baseline subprocess on one device."""
  out = tmp_path / "corpus.json"
  env = launch_env()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "bench.py"), "corpus",
                         "--quick", "--eval_every", "2", "--json", str(out)], env=env,
                        capture_output=True,
                        text=True, timeout=600 * slowness, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "net-steps/s" in proc.stdout and "ratio trainer / per-net loop" in proc.stdout
  r = json.loads(out.read_text())
  t, b = r["trainer"], r["baseline"]
  ncores = os.cpu_count()
  assert r["machine"]["num_devices"] == ncores and t["devices"] == ncores
  assert b["machine"]["num_devices"] == 1
  assert "device_count" not in b["machine"]["xla_flags"]
  assert t["nets"] % (t["nets_per_chunk"] * t["devices"]) == 0
  assert t["conv_impl"] == "im2col" and b["conv_impl"] == "lax"
  for x in (t["net_steps_per_s"], b["net_steps_per_s"], b["train_only_net_steps_per_s"],
            t["gflops_per_s"], b["gflops_per_s"], r["matmul"]["float32"]["gflops_per_s"],
            b["matmul"]["float32"]["gflops_per_s"], t["flops_per_net_step"]):
    assert x > 0
  assert r["ratio"] == pytest.approx(t["net_steps_per_s"] / b["net_steps_per_s"])
  assert b["steps"] == t["steps"] == r["settings"]["steps"]
  assert r["data"] == b["data"] == "synthetic"
  # With validation checks, the trainer is also timed without them in the same run.
  n = r["trainer_without_checks"]
  assert r["settings"]["eval_every"] == 2 and n["steps"] == t["steps"]
  assert r["ratio_checks_vs_none"] == pytest.approx(t["net_steps_per_s"]
                                                    / n["net_steps_per_s"])
  assert "ratio trainer with validation checks every 2 steps" in proc.stdout
  # The PyTorch peers ran, or the report says this Python has no torch.
  assert r["peers"]["status"] in ("ok", "no_torch") and "PyTorch peers" in proc.stdout


@pytest.mark.slow
def test_dit_bench_quick():
  r = dit_bench.run(dit_config.get_config("tiny"), quick=True, batch_sizes=(8, 2))
  sweep = r["batch_sweep"]
  assert [x["batch_size"] for x in sweep] == [2, 8]
  assert all(x["samples_per_s"] > 0 and x["mfu"] > 0 for x in sweep)
  assert r["train"]["samples_per_s"] > 0 and r["denoise"]["seconds_median"] > 0
  assert r["train"]["final_loss"] == r["train"]["final_loss"]  # not NaN
  assert 0 < r["mfu"] and r["model_flops_per_example"] > 0
  assert r["train"]["xla_flops_per_example"] > 0
  g = r["generate"]
  assert [x["nets"] for x in g["runs"]] == [1, 4] and g["steps"] == 3
  # The tokenizer comes from the quick SubtaskCNN's layout: (4, 8) widths, 16-d text.
  assert g["D"] == (27 * 4 + 4) + (36 * 8 + 8) + (8 * 16 + 16)
  # No remembered PyTorch figure: derived figures come from this run's latency only.
  assert "pytorch_reference" not in r and "ratios" not in r
  assert r["derived"]["ddpm1000_minutes_per_net"] == pytest.approx(
      1000 * r["denoise"]["seconds_median"] / 60)
  d = r["generate_default"]
  assert d["sampler_seconds_median"] > 0 and d["generate_seconds_median"] is None
  assert (d["sampler"], d["steps"]) == ("ddim", 10)  # the tiny config's default sampler
  text = dit_bench.format_report(r)
  for needle in ("train samples/s", "one denoising call, batch 1", "MFU", "DDIM-3",
                 "launch/bench.py pytorch", "one net at the tiny config (--quick)",
                 "train step by batch", "| 8 |"):
    assert needle in text
  assert "PyTorch T2W |" not in text
  assert "target: bf16 MFU" not in text  # an accelerator's target only
  json.dumps(r)  # JSON-ready


def test_batch_sweep_stops_at_the_first_batch_out_of_memory(monkeypatch):
  def fake_measure_train(size, *args, **kwargs):
    if size.batch_size >= 64:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB")
    return {"train": {"samples_per_s": 10.0 * size.batch_size},
            "achieved_gflops_per_s": 1.0 * size.batch_size, "mfu": size.batch_size / 100}

  monkeypatch.setattr(dit_bench, "measure_train", fake_measure_train)
  kw = dict(dtype="bfloat16", repeats=1, train_steps=1, matmul={})
  rows = dit_bench.batch_sweep(dit_bench.QUICK_SIZE, None, batch_sizes=(128, 32, 64, 16),
                               **kw)
  assert [x["batch_size"] for x in rows] == [16, 32, 64]  # 128 never tried
  assert rows[-1]["error"].startswith("RESOURCE_EXHAUSTED: Out of memory")
  text = "\n".join(dit_bench.describe_batch_sweep(rows, "gpu", "bfloat16"))
  assert "| 32 | 320 | 32 | 32.0 % |" in text
  assert "bf16 MFU >= 40 % at the CIFAR size: 32.0 % at batch 32, NOT met" in text
  rows[1]["mfu"] = 0.45
  assert "45.0 % at batch 32, met" in "\n".join(
      dit_bench.describe_batch_sweep(rows, "gpu", "bfloat16"))
  assert "target" not in "\n".join(dit_bench.describe_batch_sweep(rows, "gpu", "float32"))

  def broken(size, *args, **kwargs):
    raise ValueError("a bug, not memory")
  monkeypatch.setattr(dit_bench, "measure_train", broken)
  with pytest.raises(ValueError, match="a bug"):
    dit_bench.batch_sweep(dit_bench.QUICK_SIZE, None, batch_sizes=(2,), **kw)
  with pytest.raises(ConfigError, match="--batch_sizes must be positive"):
    dit_bench.run(dit_config.get_config("tiny"), quick=True, batch_sizes=(0,))


def test_dit_bench_cli_refuses_bad_batch_sizes():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "bench.py"), "dit",
                         "--batch_sizes", "32,x"], capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 2 and "expected positive integers" in proc.stderr


def test_step_bench_settings_and_report():
  """The step benchmark times diffusion-only first and reports each setting's cost as a
  ratio of seconds per step to it."""
  from configs import dit as dit_config
  from benchmarks import step_bench
  names = list(step_bench.settings(dit_config.get_config("small")))
  assert names[0] == "diffusion only" and len(names) == 4
  c = step_bench.settings(dit_config.get_config("small"))
  assert [v.fresh_chain for v in c.values()][2:] == [False, True]
  assert c["diffusion only"].task_loss_weight == 0
  assert all(v.task_loss_weight > 0 for k, v in c.items() if k != "diffusion only")
  r = {"machine": {"cpu": "x", "cpu_cores": 2, "jax_version": "0", "backend": "cpu",
                   "num_devices": 1, "device_kind": "cpu", "xla_flags": ""},
       "steps": 2, "repeats": 1, "corpus": "c",
       "settings": {"diffusion only": {"seconds_per_step": 0.1, "cost_vs_diffusion_only": 1.0},
                    "+ task loss": {"seconds_per_step": 0.25, "cost_vs_diffusion_only": 2.5}}}
  text = step_bench.format_report(r)
  assert "| + task loss | 250.0 | 4.00 | 2.50x |" in text


def test_family_settings_follow_the_corpus_config():
  """The adapter variant's settings name its family, trunk and bottleneck; the CNN's
  theirs; both share the trainer's work, which the comparison insists on."""
  from benchmarks import family_bench
  cnn = corpus_bench.settings_from_config(corpus_config.get_config(""), quick=True)
  ad = corpus_bench.settings_from_config(corpus_config.get_config("adapter"), quick=True)
  assert cnn.family == "cnn" and cnn.widths == tuple(corpus_config.NETS["cnn2k"]["widths"])
  assert ad.family == "adapter" and ad.bottleneck == 16 and ad.trunk_widths == (16, 32, 64)
  assert corpus_bench.Settings.from_json(json.loads(json.dumps(ad.to_json()))) == ad
  with pytest.raises(ValueError, match="family"):
    corpus_bench.Settings(family="transformer")
  with pytest.raises(ValueError, match=r"differ in \['steps'\]"):
    family_bench.run(cnn, dataclasses.replace(ad, steps=ad.steps + 1))
  with pytest.raises(ValueError, match="need a cnn and an adapter"):
    family_bench.run(ad, cnn)


def test_family_comparison_arithmetic():
  """Nets per hour from nets and median seconds; the ratio; the feature pass's break-even:
  the corpus size at which its seconds equal the time the faster trainer saved."""
  from benchmarks import family_bench
  cnn = {"nets": 64, "seconds_median": 32.0, "data_seconds": 0.0}      # 0.5 s/net
  ad = {"nets": 64, "seconds_median": 8.0, "data_seconds": 3.0}        # 0.125 s/net
  r = family_bench.compare(cnn, ad)
  assert r["cnn_nets_per_hour"] == pytest.approx(7200.0)
  assert r["adapter_nets_per_hour"] == pytest.approx(28800.0)
  assert r["ratio"] == pytest.approx(4.0)
  assert r["breakeven_nets"] == pytest.approx(3.0 / 0.375)
  assert family_bench.compare(ad, cnn)["breakeven_nets"] == float("inf")


@pytest.mark.slow
def test_family_bench_quick_runs_both_families_on_the_same_tasks():
  from benchmarks import family_bench
  cnn, ad = (corpus_bench.settings_from_config(corpus_config.get_config(v), quick=True,
                                                nets=4, eval_every=2)
             for v in ("", "adapter"))
  r = family_bench.run(cnn, ad)
  assert r["cnn"]["family"] == "cnn" and r["adapter"]["family"] == "adapter"
  assert r["cnn"]["nets"] == r["adapter"]["nets"] and r["cnn"]["steps"] == 4
  assert r["cnn"]["data_seconds"] == 0 and r["adapter"]["data_seconds"] > 0
  # The adapter's FLOPs are its own (features in, no convolution), far below the CNN's.
  assert 0 < r["adapter"]["flops_per_net_step"] < r["cnn"]["flops_per_net_step"]
  assert r["ratio"] == pytest.approx(family_bench.nets_per_hour(r["adapter"])
                                     / family_bench.nets_per_hour(r["cnn"]))
  text = family_bench.format_report(r)
  assert "adapter / CNN nets per hour" in text and "target >= 10x" in text
  json.dumps(r)


def test_gpu_checks_script_runs_commands_the_benchmark_accepts(tmp_path):
  """scripts/gpu_checks.sh run, with a recording python3 and nvidia-smi on PATH: every
  benchmark it starts is a command line that launch/bench.py's parser accepts."""
  fake = tmp_path / "bin"
  fake.mkdir()
  calls = tmp_path / "calls.txt"
  for name in ("python3", "nvidia-smi"):
    (fake / name).write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {calls}\n')
    (fake / name).chmod(0o755)
  env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
  script = os.path.join(ROOT, "scripts", "gpu_checks.sh")
  proc = subprocess.run(["bash", script, "run", str(tmp_path / "out")], env=env,
                        capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  benches = [line.split()[2:] for line in calls.read_text().splitlines()
             if line.startswith("python3 launch/bench.py")]
  assert [b[0] for b in benches][:2] == ["dit", "corpus"]
  spec = importlib.util.spec_from_file_location("launch_bench",
                                                os.path.join(ROOT, "launch", "bench.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  for argv in benches:
    bench._parser().parse_args(argv)  # exits (SystemExit) on a flag it does not know
  dit = bench._parser().parse_args(benches[0])
  assert dit.dtype == "bfloat16" and dit.batch_sizes == (32, 128, 256, 512, 1024)
  usage = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60,
                         check=False)
  assert usage.returncode == 2 and "usage" in usage.stderr

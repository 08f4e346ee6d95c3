"""Tests for benchmarks/xla_flags_bench.py: the report, and a candidate XLA rejects."""
from benchmarks import xla_flags_bench as xb


def _candidate(name, flags, mm, sps, failed=()):
  return {"name": name, "xla_flags": flags, "runs": [], "matmul_gflops_per_s": mm,
          "train_samples_per_s": sps, "failed": list(failed)}


def test_report_ratios_against_the_first_candidate():
  result = {"date": "2026-12-04T00:00:00+00:00", "rounds": 2, "matmul_n": 2048,
            "machine": {"cpu": "Test CPU", "cpu_cores": 2, "jax_version": "0",
                        "backend": "cpu", "num_devices": 1, "device_kind": "cpu",
                        "xla_flags": ""},
            "commit": {"commit": "0123456789abcdef", "dirty": False},
            "candidates": [_candidate("none", "", 100.0, 8.0),
                           _candidate("fast", "--x=1", 150.0, 10.0),
                           _candidate("broken", "--y=1", None, None, ["exit 1: bad flag"])]}
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in xb.format_report(result).splitlines() if line.startswith("| ")}
  assert rows["fast"] == ["--x=1", "150.0", "1.50x", "10.00", "1.25x"]
  assert rows["broken"][1] == "failed" and "bad flag" in rows["broken"][3]


def test_a_flag_xla_rejects_is_a_failed_candidate_not_a_result():
  r = xb.run_candidate("--xla_no_such_option_at_all=1", quick=True, repeats=1, steps=1,
                       matmul_size=64, timeout=300)
  assert r["status"] == "failed" and r["reason"].startswith("exit ")

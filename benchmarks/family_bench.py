"""Benchmark of corpus throughput by subtask family: nets per hour, CNN against adapter.

One run of ``python launch/bench.py families`` times the en-masse trainer
(``corpus_bench.run_trainer``) twice in one process, on the same data, tasks, steps, batch
size and validation checks, each family with its own config's trainer shape (vmap chunk):
once for the default corpus's CNN family (``configs/corpus.py``) and once for the adapter
family (``configs/corpus.py:adapter``: a bottleneck adapter on the
pooled features of a frozen CNN trunk, the features computed once). It reports each
family's nets per hour at those fixed steps, their ratio, and the one-off cost the adapter
family pays first (the trunk's forward pass over every image; training the trunk is a
one-off cost like the CNN family's generalist and is not timed here).

Fixed steps, not early stopping: both families train the same steps per net, so the ratio
is the trainer's, not the data's (an early-stopped corpus stops nets at different steps).
"""
import dataclasses

import jax

from benchmarks import corpus_bench
from benchmarks import harness

# The target: the adapter family at >= 10x the CNN family's nets per hour.
TARGET_RATIO = 10.0


def nets_per_hour(trainer: dict) -> float:
  """Nets per hour of one timed trainer call (``corpus_bench.run_trainer``'s result)."""
  return 3600.0 * trainer["nets"] / trainer["seconds_median"]


def compare(cnn: dict, adapter: dict) -> dict:
  """The ratio and the one-off cost's break-even, from two ``run_trainer`` results.

  Returns:
    dict: nets_per_hour for both, ratio (adapter / cnn), and breakeven_nets: the corpus
    size above which the adapter family, feature computation included, takes less time
    than the CNN family (inf when its trainer is not the faster one).
  """
  cnn_h, ad_h = nets_per_hour(cnn), nets_per_hour(adapter)
  per_net_saved = 3600.0 / cnn_h - 3600.0 / ad_h
  breakeven = (adapter["data_seconds"] / per_net_saved if per_net_saved > 0
               else float("inf"))
  return {"cnn_nets_per_hour": cnn_h, "adapter_nets_per_hour": ad_h,
          "ratio": ad_h / cnn_h, "breakeven_nets": breakeven}


def run(cnn: corpus_bench.Settings, adapter: corpus_bench.Settings) -> dict:
  """Both families' trainers on the same data and tasks, in one run.

  Args:
    cnn / adapter: the two families' settings; they must agree on everything but the net
      and the trainer's shape (``nets_per_chunk``, ``conv_impl``).

  Returns:
    JSON-ready results (see ``format_report``).

  Raises:
    ValueError: the settings differ in more than the subtask net, or name other families.
  """
  if (cnn.family, adapter.family) != ("cnn", "adapter"):
    raise ValueError(f"need a cnn and an adapter family, got {cnn.family!r} and "
                     f"{adapter.family!r}")
  # The net, and the trainer's shape (vmap chunk, conv implementation), may differ: each
  # family runs as its corpus config runs it. The work per net may not.
  net_fields = {"family", "widths", "strides", "trunk_widths", "trunk_strides", "bottleneck",
                "nets_per_chunk", "conv_impl"}
  a, b = cnn.to_json(), adapter.to_json()
  differ = sorted(k for k in a if k not in net_fields and a[k] != b[k])
  if differ:
    raise ValueError(f"the two families' settings differ in {differ}: the ratio would not "
                     "compare like with like")
  dataset, source = corpus_bench.load_data(cnn)
  cnn_r = corpus_bench.run_trainer(cnn, dataset)
  adapter_r = corpus_bench.run_trainer(adapter, dataset)
  size = cnn.matmul_size or harness.default_matmul_size()
  devices = jax.local_devices()[:cnn_r["devices"]]
  matmul = harness.matmul_peak(size, "float32", cnn.repeats, devices)
  return {
      "benchmark": "families", "date": harness.utc_now(), "commit": harness.git_commit(harness.ROOT),
      "machine": harness.machine_info(), "data": source,
      "settings": {"cnn": dataclasses.replace(cnn, data=source).to_json(),
                   "adapter": dataclasses.replace(adapter, data=source).to_json()},
      "cnn": cnn_r, "adapter": adapter_r, "matmul": {"float32": matmul, "size": size},
      **compare(cnn_r, adapter_r), "target_ratio": TARGET_RATIO,
  }


def format_report(r: dict) -> str:
  """The printed report: machine, work, a row per family, the ratio against the target."""
  s, mm = r["settings"]["cnn"], r["matmul"]["float32"]["gflops_per_s"]
  rows = []
  for name in ("cnn", "adapter"):
    t, cfg = r[name], r["settings"][name]
    net = (f"CNN {'-'.join(map(str, cfg['widths']))}" if name == "cnn" else
           f"adapter b={cfg['bottleneck']} on a {'-'.join(map(str, cfg['trunk_widths']))} trunk")
    rows.append([net, t["nets"], t["nets_per_chunk"], t["net_steps_per_s"],
                 r[f"{name}_nets_per_hour"],
                 t["gflops_per_s"], f"{100 * t['gflops_per_s'] / mm:.1f}%",
                 t["data_seconds"]])
  met = "met" if r["ratio"] >= r["target_ratio"] else "NOT met"
  return "\n".join([
      f"corpus throughput by subtask family, {r['date']}, t2w_jax "
      f"{harness.describe_commit(r['commit'])}",
      f"machine: {harness.describe_machine(r['machine'])}",
      f"work: {s['steps']} steps/net at batch {s['batch_size']}, {s['image_size']}px "
      f"{r['data']} images, tasks of {s['min_classes']}-{s['max_classes']} classes, "
      f"validation checks every {s['eval_every']} steps (no net stops), accuracy of base and "
      f"trained net; median of {s['repeats']}",
      "",
      harness.format_table(["family", "nets/call", "nets/chunk", "net-steps/s", "nets/hour",
                          "GFLOP/s",
                          f"of matmul ({mm:.4g} GFLOP/s)", "features s (once)"], rows),
      "",
      f"adapter / CNN nets per hour: {r['ratio']:.2f}x (target >= {r['target_ratio']:g}x: "
      f"{met}); the feature pass pays for itself after {r['breakeven_nets']:.0f} nets",
  ])

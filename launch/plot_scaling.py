"""The scaling curve's plot and table from ablation runs (configs/ablations.py variants).

  python launch/plot_scaling.py --results runs/scale/ablations/results.json \
      --out docs/results/scaling.png

Reads the ``launch/ablate.py`` results of the variants "full" (every seen net), "corpus_N"
(the first N seen nets, or a corpus built with N seen nets) and "dit_WxD[_chain]" (another
DiT size on every seen net; "..._corpus_N" on the first N), plots the room each closes,
(generated − generalist) / (specialist − generalist) on its own corpus's tasks, against the
number of corpus nets per split, and prints the table. A results file with a "hypernet" entry (the ``hypernet`` evaluator's
result on the same tasks) adds the plain hypernetwork's room as a reference line, measured
against the "full" variant's generalist and specialists.
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from t2w_jax.evaluate import plots  # noqa: E402


def room_closed(per_split: dict) -> float:
  """(generated − generalist) / (specialist − generalist) of one variant's split, each from
  that variant's own tasks (a larger corpus draws other unseen tasks)."""
  g, o = per_split["generalist"]["mean"], per_split["oracle"]["mean"]
  return (per_split["mean"] - g) / (o - g)


def points_from(results: dict, num_seen: int, small_label: str) -> dict:
  """The ``plots.plot_scaling`` points of an ablation results.json: room closed per
  variant, against its number of corpus nets."""
  variants = results["variants"]
  splits = list(results["config"]["splits"])
  out = {"splits": {}}
  for split in splits:
    series: dict = {}
    for name, per in variants.items():
      if split not in per:
        continue
      m = re.fullmatch(r"corpus_(\d+)", name)
      d = re.fullmatch(r"dit_(\d+x\d+)(?:_chain)?(?:_corpus_(\d+))?", name)
      if name == "full" or m:
        n = int(m.group(1)) if m else num_seen
        series.setdefault(small_label, []).append([n, room_closed(per[split])])
      elif d:
        n = int(d.group(2)) if d.group(2) else num_seen
        series.setdefault(f"DiT {d.group(1)}", []).append([n, room_closed(per[split])])
    out["splits"][split] = {"series": series}
    hyp = results.get("hypernet", {}).get("splits", {}).get(split)
    if hyp is not None and split in variants.get("full", {}):
      ref = dict(variants["full"][split], mean=hyp["methods"]["hypernet"]["mean"])
      out["splits"][split]["references"] = {"plain hypernetwork (no corpus)": room_closed(ref)}
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", required=True, help="an ablation results.json")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--num_seen", type=int, default=504, help="seen nets of the corpus")
  parser.add_argument("--label", default="DiT 64x3 (default)", help="the default's label")
  args = parser.parse_args(argv)
  with open(args.results) as f:
    points = points_from(json.load(f), args.num_seen, args.label)
  plots.plot_scaling(points, args.out)
  for split, p in points["splits"].items():
    print(f"{split} (room closed):")
    for label, series in p["series"].items():
      print("  " + label + ": " + ", ".join(f"{n} nets {a:.2f}" for n, a in sorted(series)))
    for label, room in p.get("references", {}).items():
      print(f"  {label}: {room:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

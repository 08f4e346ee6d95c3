"""Benchmarks: the corpus trainer, the DiT, and the DiT beside the PyTorch T2W.

  python launch/bench.py corpus [--quick] [--json PATH] [--torch_python PYTHON] [--nets N] ...
  python launch/bench.py dit [--quick] [--json PATH] [--repeats N] [--dtype bfloat16] ...
  python launch/bench.py pytorch --t2w_repo PATH [--torch_python PYTHON] [--json PATH] ...
  python launch/bench.py step --workdir runs/default [--json PATH]
  python launch/bench.py families [--quick] [--json PATH] [--nets N] [--steps N] ...
  python launch/bench.py profile [--quick] [--json PATH] [--conditioning token] ...
  python launch/bench.py kernels [--quick] [--json PATH] [--repeats N]
  python launch/bench.py xla_flags [--quick] [--json PATH] [--rounds N]

``corpus``: the en-masse trainer (configs/corpus.py, one single-threaded XLA device per CPU
core) against a plain per-net loop in a subprocess with default threading, both in
net-steps/s and GFLOP/s, against a large matmul, and against two PyTorch peers training
the same CNN on the same batches (``torch.func`` vmap and a per-net loop; run by
``--torch_python``). ``dit``: DiT train samples/s and denoising
latency at the PyTorch T2W's CIFAR-100 size, MFU, one net at the default config, and DDIM-50
generation time at the small config. ``pytorch``: the same CIFAR-size figures for ours and
for the PyTorch T2W of a checkout (timed in a subprocess by a Python with torch), with the
ratios, in one run. ``step``: the generator's train step on an existing corpus, diffusion
loss alone against diffusion + task loss (with and without fresh tasks), in one run.
``families``: the corpus trainer's nets per hour for the default CNN family against the
adapter family (features of a frozen trunk computed once), same work, in one run.
``profile``: where the CIFAR-size DiT's train step and batch-1 denoising call spend their
time, per part of the model, from a ``jax.profiler`` trace, against the same-run matmul.
``kernels``: each speed change of the DiT step (projections, attention, optimiser) against
the code it replaced, alternating calls in one run. ``xla_flags``: the DiT train step and
a matmul under each candidate set of XLA:CPU options, each in a fresh process, in turns.
``--quick`` runs tiny sizes once (smoke test). See benchmarks/ for
what exactly is timed. A user error (a bad --t2w_repo, say) is one line, exit status 2.
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from t2w_jax import platform  # noqa: E402  (must run before JAX is imported)


def _batch_sizes(text: str) -> tuple[int, ...]:
  """"32,128,512" -> (32, 128, 512); anything but positive integers is refused."""
  try:
    sizes = tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    sizes = ()
  if not sizes or min(sizes) < 1:
    raise argparse.ArgumentTypeError(
        f"expected positive integers separated by commas, got {text!r}")
  return sizes


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="which", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
  common.add_argument("--json", help="also write the results to this JSON file")
  common.add_argument("--repeats", type=int, help="timed repeats (median reported)")
  common.add_argument("--matmul_size", type=int, help="n of the n^3 peak matmul")

  c = sub.add_parser("corpus", parents=[common], help="en-masse trainer vs per-net loop")
  c.add_argument("--variant", default="", help="configs/corpus.py variant ('' or 'tiny')")
  c.add_argument("--nets", type=int, help="nets per trainer call (default: max(16, 2 x chunk x devices))")
  c.add_argument("--baseline_nets", type=int, help="nets of the per-net loop per repeat")
  c.add_argument("--steps", type=int, help="train steps per net (default: config)")
  c.add_argument("--nets_per_chunk", type=int, help="override the config's vmap chunk")
  c.add_argument("--conv_impl", choices=["lax", "im2col"], help="override the trainer's conv")
  c.add_argument("--eval_every", type=int,
                 help="trainer's validation checks every N steps (early stopping's cost; "
                      "no net stops, so both sides train the same steps); default 0")
  c.add_argument("--data", choices=["auto", "shapes", "synthetic"],
                 help="dataset (default auto: the embedded shapes, else synthetic)")
  c.add_argument("--torch_python", default=sys.executable,
                 help="the Python that runs the PyTorch peers (default: this one; without "
                      "torch there, ours only)")
  c.add_argument("--torch_threads", type=int, help="torch's threads (default: CPU count)")
  c.add_argument("--torch_timeout", type=float, default=7200.0,
                 help="seconds the PyTorch peers may take")
  c.add_argument("--torch_nets", type=int,
                 help="nets of the torch.func vmap peer (default: the trainer's)")
  c.add_argument("--torch_loop_nets", type=int,
                 help="nets of the torch per-net loop peer (default: --baseline_nets)")

  f = sub.add_parser("families", parents=[common],
                     help="corpus nets per hour: CNN family vs adapter family")
  f.add_argument("--nets", type=int, help="nets per trainer call (default: as corpus)")
  f.add_argument("--steps", type=int, help="train steps per net (default: config)")
  f.add_argument("--eval_every", type=int,
                 help="validation checks every N steps (default: the corpus config's)")
  f.add_argument("--cnn_nets_per_chunk", type=int, help="override the CNN config's vmap chunk")
  f.add_argument("--adapter_nets_per_chunk", type=int,
                 help="override the adapter config's vmap chunk")

  d = sub.add_parser("dit", parents=[common], help="DiT training, denoising and sampling")
  d.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                 help="DiT compute dtype at the CIFAR size (auto: f32 on CPU, bf16 else)")
  d.add_argument("--host_devices", action="store_true",
                 help="one single-threaded XLA device per CPU core (batch split over them)")
  d.add_argument("--train_steps", type=int, help="train steps per timed repeat")
  d.add_argument("--batch_sizes", type=_batch_sizes, default=(),
                 help="comma-separated train batches timed after the main figures (e.g. "
                      "32,128,512 on a GPU: its MFU at the batch that fills the chip)")

  t = sub.add_parser("pytorch", parents=[common],
                     help="ours and the PyTorch T2W side by side at its CIFAR size")
  t.add_argument("--t2w_repo", required=True, help="path of a checkout of the PyTorch T2W")
  t.add_argument("--torch_python", default=sys.executable,
                 help="the Python that has torch (default: this one)")
  t.add_argument("--torch_threads", type=int, help="torch's threads (default: CPU count)")
  t.add_argument("--torch_timeout", type=float, default=3600.0,
                 help="seconds the PyTorch side may take")
  t.add_argument("--train_steps", type=int, help="train steps per timed repeat")
  t.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="both sides' compute dtype (theirs: torch.autocast for bfloat16)")
  t.add_argument("--rounds", type=int, default=1,
                 help="time both sides this many times, alternating which runs first; "
                      "the targets are judged on each ratio's median")
  pr = sub.add_parser("profile", parents=[common],
                      help="per-op profile of the DiT train step and denoising call")
  pr.add_argument("--conditioning", choices=["prior", "token"], default="prior",
                  help="our default (prior) or the PyTorch T2W's conditioning (token)")
  pr.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                  help="the DiT's compute dtype")
  pr.add_argument("--calls", type=int, help="traced calls (the breakdown is per call)")
  kb = sub.add_parser("kernels", parents=[common],
                      help="the DiT step's speed changes against the code they replaced")
  kb.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                  help="the products' compute dtype")
  xf = sub.add_parser("xla_flags", parents=[common],
                      help="the DiT train step under candidate XLA:CPU options")
  xf.add_argument("--rounds", type=int, help="turns of all candidates (median reported)")
  st = sub.add_parser("step", parents=[common],
                      help="generator train step: diffusion only vs + task loss")
  st.add_argument("--workdir", required=True, help="run directory holding corpus/")
  st.add_argument("--config_variant", default="small", help="configs/dit.py variant")
  st.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
  return parser


def _default_net() -> tuple[dict, int]:
  """The default corpus's subtask net (with its text dimension) and image size."""
  from configs import corpus as corpus_config  # noqa: PLC0415
  c = corpus_config.get_config("")
  if c.text_encoder != "minilm":
    raise ValueError(f"the one-net figure assumes MiniLM text (384-d), the default corpus "
                     f"uses {c.text_encoder!r}")
  return dict(c.model.to_dict(), embed_dim=384), int(c.image_size)


def main(argv=None) -> int:
  """Runs the benchmark the command line names; a UserError is one line and exit status 2."""
  from t2w_jax.errors import UserError  # noqa: PLC0415  (imports no JAX)
  try:
    return _main(argv)
  except UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2  # as t2w_jax.cli.USER_ERROR_EXIT, without importing absl here


def _main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.which in ("corpus", "families") or getattr(args, "host_devices", False):
    platform.setup_host_devices()
  import logging  # noqa: PLC0415  (after the platform set-up, like every JAX import)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "no TPU backend" notices
  from benchmarks import harness  # noqa: PLC0415

  if args.which == "corpus":
    from configs import corpus as corpus_config  # noqa: PLC0415
    from benchmarks import corpus_bench  # noqa: PLC0415
    settings = corpus_bench.settings_from_config(
        corpus_config.get_config(args.variant), quick=args.quick, repeats=args.repeats,
        matmul_size=args.matmul_size, nets=args.nets, baseline_nets=args.baseline_nets,
        steps=args.steps, nets_per_chunk=args.nets_per_chunk, conv_impl=args.conv_impl,
        eval_every=args.eval_every, data=args.data, torch_nets=args.torch_nets,
        torch_loop_nets=args.torch_loop_nets)
    result = corpus_bench.run(settings, torch_python=args.torch_python,
                              torch_threads=args.torch_threads, torch_timeout=args.torch_timeout)
    report = corpus_bench.format_report(result)
  elif args.which == "families":
    from configs import corpus as corpus_config  # noqa: PLC0415
    from benchmarks import corpus_bench, family_bench  # noqa: PLC0415
    cnn_cfg = corpus_config.get_config("")
    settings = [corpus_bench.settings_from_config(
        corpus_config.get_config(variant), quick=args.quick, repeats=args.repeats,
        matmul_size=args.matmul_size, nets=args.nets, steps=args.steps,
        nets_per_chunk=chunk,
        eval_every=(args.eval_every if args.eval_every is not None
                    else 2 if args.quick else cnn_cfg.trainer.eval_every))
        for variant, chunk in (("", args.cnn_nets_per_chunk),
                               ("adapter", args.adapter_nets_per_chunk))]
    result = family_bench.run(*settings)
    report = family_bench.format_report(result)
  elif args.which == "dit":
    from configs import dit as dit_config  # noqa: PLC0415
    from benchmarks import dit_bench  # noqa: PLC0415
    cnn, image_size = _default_net()
    result = dit_bench.run(dit_config.get_config("tiny" if args.quick else "small"),
                           quick=args.quick, repeats=args.repeats, dtype=args.dtype,
                           matmul_size=args.matmul_size, train_steps=args.train_steps,
                           default_cnn=None if args.quick else cnn,
                           default_image_size=image_size,
                           batch_sizes=args.batch_sizes)
    report = dit_bench.format_report(result)
  elif args.which == "profile":
    from configs import dit as dit_config  # noqa: PLC0415
    from benchmarks import profile_bench  # noqa: PLC0415
    result = profile_bench.run(dit_config.get_config("tiny" if args.quick else "small"),
                               quick=args.quick, conditioning=args.conditioning,
                               dtype=args.dtype, repeats=args.repeats, calls=args.calls,
                               matmul_size=args.matmul_size)
    report = profile_bench.format_report(result)
  elif args.which == "kernels":
    from configs import dit as dit_config  # noqa: PLC0415
    from benchmarks import kernel_bench  # noqa: PLC0415
    result = kernel_bench.run(dit_config.get_config("small"), quick=args.quick,
                              repeats=args.repeats, dtype=args.dtype)
    report = kernel_bench.format_report(result)
  elif args.which == "xla_flags":
    from benchmarks import xla_flags_bench  # noqa: PLC0415
    result = xla_flags_bench.run(quick=args.quick, rounds=args.rounds,
                                 matmul_size=args.matmul_size)
    report = xla_flags_bench.format_report(result)
  elif args.which == "step":
    from configs import dit as dit_config  # noqa: PLC0415
    from benchmarks import step_bench  # noqa: PLC0415
    result = step_bench.run(dit_config.get_config(args.config_variant), args.workdir,
                            steps=1 if args.quick else args.steps,
                            repeats=1 if args.quick else (args.repeats or 3))
    report = step_bench.format_report(result)
  else:
    from configs import dit as dit_config  # noqa: PLC0415
    from benchmarks import pytorch_bench  # noqa: PLC0415
    cnn, image_size = _default_net()
    result = pytorch_bench.run(
        args.t2w_repo, dit_config.get_config("tiny" if args.quick else "small"),
        torch_python=args.torch_python, threads=args.torch_threads, quick=args.quick,
        repeats=args.repeats, train_steps=args.train_steps, matmul_size=args.matmul_size,
        default_cnn=None if args.quick else cnn, default_image_size=image_size,
        timeout=args.torch_timeout, dtype=args.dtype, rounds=args.rounds)
    report = pytorch_bench.format_report(result)
  print(report, flush=True)
  if args.json:
    harness.write_json(args.json, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())

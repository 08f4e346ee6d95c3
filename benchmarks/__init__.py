"""Benchmarks of t2w_jax: the corpus trainer, the DiT, and the DiT beside the PyTorch T2W.

Run from the repository root with ``python launch/bench.py {corpus,families,dit,step,pytorch,profile,kernels,xla_flags}``
(figures in docs/bench/). Not part of the installed library: these drivers time the library
and import it; nothing in ``t2w_jax`` imports them.

  corpus_bench.py   the en-masse corpus trainer against a plain per-net loop
  family_bench.py   the corpus trainer's nets per hour, CNN family against adapter family
  dit_bench.py      DiT training, denoising and sampling; MFU against the matmul peak
  step_bench.py     the generator's train step with and without the task loss
  pytorch_bench.py  ours beside the PyTorch T2W (torch_driver.py: its side, in a subprocess)
  profile_bench.py  where the DiT step's time goes, by part of the model
  kernel_bench.py   each DiT speed change against the code it replaced
  xla_flags_bench.py  the DiT step under candidate XLA:CPU options
  harness.py        what they share: machine, timing, matmul peak, tables, JSON, drivers
  driver_io.py      what the PyTorch drivers share (standard library only)
"""

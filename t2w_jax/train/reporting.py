"""Metric writing and progress reports without TensorFlow.

``clu.metric_writers`` and ``clu.periodic_actions`` import TensorFlow, which t2w_jax does not
require; these two small classes keep their interface (``write_scalars(step, dict)``,
``__call__(step)``) and write TensorBoard event files with tensorboardX.
"""
import logging
import time
from typing import Mapping

from t2w_jax import multihost


class MetricWriter:
  """Writes scalars to the log and (when tensorboardX is present) to TensorBoard.

  In a multi-process run only process 0 writes (every process holds the same metrics).
  """

  def __init__(self, logdir: str | None):
    self._tb = None
    self._on = multihost.is_primary()
    if not self._on:
      return
    if logdir:
      try:
        from tensorboardX import SummaryWriter  # optional: logging still works without it
        self._tb = SummaryWriter(logdir)
      except ImportError:
        logging.warning("tensorboardX not installed; metrics go to the log only")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._on:
      return
    logging.info("step %d: %s", step,
                 ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(scalars.items())))
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class ProgressReporter:
  """Logs steps/s and ETA every ``every_secs`` seconds (checked when called each step)."""

  def __init__(self, total_steps: int, every_secs: float = 10.0, writer: MetricWriter | None = None):
    self.total = total_steps
    self.every = every_secs
    self.writer = writer
    self._t0 = self._last_t = None
    self._last_step = None

  def __call__(self, step: int) -> None:
    now = time.time()
    if self._t0 is None:
      self._t0, self._last_t, self._last_step = now, now, step
      return
    if now - self._last_t < self.every and step != self.total:
      return
    rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    logging.info("progress: step %d/%d, %.2f steps/s, ETA %.0f s", step, self.total, rate, eta)
    if self.writer is not None:
      self.writer.write_scalars(step, {"steps_per_sec": rate})
    self._last_t, self._last_step = now, step


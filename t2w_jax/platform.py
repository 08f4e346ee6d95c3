"""Process set-up that must happen before JAX is imported.

On a CPU host, one XLA device per core (each single-threaded) lets the corpus trainer and
the data-parallel DiT trainer use every core through the same mesh code that spreads work
over GPUs or TPU chips; intra-op threading of many tiny ops scales poorly on XLA:CPU.
"""
import os
import platform as py_platform
import sys


def setup_host_devices(num_devices: int | None = None) -> None:
  """Expose ``num_devices`` (default: the core count) CPU devices, one thread each.

  A no-op when JAX is already imported or XLA_FLAGS already sets a device count. The flags
  only affect the CPU platform, so it is harmless on GPU and TPU hosts.
  """
  if "jax" in sys.modules:
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return
  n = num_devices or os.cpu_count() or 1
  extra = f"--xla_force_host_platform_device_count={n}"
  if n > 1 and "xla_cpu_multi_thread_eigen" not in flags:
    extra += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return py_platform.processor() or "unknown"

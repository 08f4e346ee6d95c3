"""Test set-up: offline, CPU, eight simulated devices.

The environment is fixed before JAX is imported anywhere, so every test sees the same
eight host devices that the sharding tests need, and nothing can reach the network.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TFDS_DISABLE_GCS"] = "1" if "TFDS_DISABLE_GCS" not in os.environ else os.environ["TFDS_DISABLE_GCS"]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

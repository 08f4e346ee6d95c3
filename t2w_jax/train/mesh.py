"""The device mesh ('data', 'model') and the shardings of the train state and batches."""
import contextlib
import functools
import logging

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t2w_jax.models import LOGICAL_AXIS_RULES


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh; -1 for ``data`` takes all remaining devices.

  Uses ``mesh_utils.create_device_mesh`` so that on TPU the model axis follows the
  interconnect; falls back to a plain reshape on CPU or odd device counts.
  """
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(f"model axis {model} does not divide the {n} devices")
  data = n // model if data == -1 else data
  if data * model > n:
    raise ValueError(f"mesh {data}x{model} needs {data * model} devices, have {n}")
  devices = devices[:data * model]
  try:
    grid = mesh_utils.create_device_mesh((data, model), devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, ("data", "model"))


def state_shardings(abstract_boxed_state, mesh: Mesh):
  """NamedShardings for every leaf of a state whose params carry logical-axis boxes."""
  specs = nn.get_partition_spec(abstract_boxed_state)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, P("data"))


@contextlib.contextmanager
def activate(mesh: Mesh):
  """Mesh + logical axis rules, so the models' activation constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize()`` on multi-host launches (TPU pods, SLURM, ...)."""
  import os
  markers = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS",
             "MEGASCALE_COORDINATOR_ADDRESS")
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  multi = ("," in hosts) or int(os.environ.get("SLURM_NTASKS", "1")) > 1 or (
      "JAX_COORDINATOR_ADDRESS" in os.environ)
  if multi and any(m in os.environ for m in markers):
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())

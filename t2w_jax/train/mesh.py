"""The device mesh ('data', 'model') and the shardings of the train state and batches."""
import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t2w_jax.errors import ConfigError
from t2w_jax.models import LOGICAL_AXIS_RULES


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh; -1 for ``data`` takes all remaining devices.

  Uses ``mesh_utils.create_device_mesh`` so that on TPU the model axis follows the
  interconnect; falls back to a plain reshape on CPU or odd device counts.
  """
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ConfigError(f"mesh.model={model} does not divide the {n} devices; set "
                      f"--config.mesh.model to a divisor of {n}")
  data = n // model if data == -1 else data
  if data < 1 or data * model > n:
    raise ConfigError(f"mesh {data}x{model} (mesh.data x mesh.model) needs {data * model} "
                      f"devices, have {n}; set --config.mesh.data to at most {n // model} "
                      f"(or -1: all)")
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


def check_divisible(abstract_boxed_state, mesh: Mesh, *, config_keys: dict | None = None) -> None:
  """Refuses a mesh that some parameter's sharded dimension does not divide.

  Run at start-up: without it the first ``jit`` dies deep inside JAX
  ("array axis 0 is partitioned 4 times, but the dimension size is 2").

  Args:
    abstract_boxed_state: ``jax.eval_shape`` of the state, params carrying logical-axis boxes.
    mesh: the mesh the state would be sharded over.
    config_keys: logical axis name -> the config keys that set that dimension, for the
      message (e.g. {"heads": "model.num_heads"}).

  Raises:
    ConfigError: naming the parameter, its dimension, the mesh axis, and the keys to change.
  """
  rules = dict(LOGICAL_AXIS_RULES)
  boxed = jax.tree_util.tree_leaves_with_path(
      abstract_boxed_state, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for path, leaf in boxed:
    if not isinstance(leaf, nn.Partitioned):
      continue
    for dim, name in enumerate(leaf.names):
      axes = rules.get(name, name) if isinstance(leaf, nn.LogicallyPartitioned) else name
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      axes = tuple(a for a in axes if a in mesh.shape)
      parts = int(np.prod([mesh.shape[a] for a in axes]))
      size = leaf.value.shape[dim]
      if size % parts:
        keys = (config_keys or {}).get(name)
        fix = " or ".join(f"--config.{k}" for k in ([keys] if isinstance(keys, str)
                                                     else keys or []))
        raise ConfigError(
            f"parameter {jax.tree_util.keystr(path)} has {size} {name!r} along dimension "
            f"{dim}, which the mesh splits {parts} ways (mesh axis {'x'.join(axes)}="
            f"{parts}); set --config.mesh.{axes[0]} to a divisor of {size}"
            + (f", or change {fix} to a multiple of {parts}" if fix else ""))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, P("data"))


def per_device(mesh: Mesh) -> NamedSharding:
  """Leading axis split over every device of the mesh (both axes): one row per device."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh):
  """Mesh + logical axis rules, so the models' activation constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


"""Weight-space models: the prior-attention DiT and the weight-space discriminator.

Params are created with logical axis names; shard them with
``nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, LOGICAL_AXIS_RULES)``
and run apply under ``jax.set_mesh(mesh)`` and ``nn.logical_axis_rules(LOGICAL_AXIS_RULES)``
so activation constraints apply. The mesh must have Auto axis types (the
``jax.sharding.Mesh`` constructor's default; ``jax.make_mesh`` defaults to Explicit in
recent JAX, which these modules do not support). Without a mesh, plain ``init``/``apply`` work; use
``unbox`` (``nn.meta.unbox``) for plain arrays.
"""
from t2w_jax.models.discriminator import WeightDiscriminator
from t2w_jax.models.dit import DiT
from t2w_jax.models.dit import model_flops_per_example
from t2w_jax.models.layers import LOGICAL_AXIS_RULES
from t2w_jax.models.layers import param_count
from t2w_jax.models.layers import unbox

__all__ = [
    "DiT",
    "LOGICAL_AXIS_RULES",
    "WeightDiscriminator",
    "model_flops_per_example",
    "param_count",
    "unbox",
]

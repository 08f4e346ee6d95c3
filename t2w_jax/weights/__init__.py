"""t2w_jax.weights: flat layouts, block tokens, per-layer normalisation, permutations.

``ParamLayout`` maps a params pytree to one flat vector; ``BlockTokenizer`` cuts that vector
into per-layer blocks (the DiT's tokens); ``LayerNorms`` puts every layer on one scale; the
``permute`` functions apply the SubtaskCNN's hidden-unit symmetries for augmentation.
"""
from t2w_jax.weights.layout import ParamLayout
from t2w_jax.weights.normalize import LayerNorms
from t2w_jax.weights.normalize import layer_stats
from t2w_jax.weights.permute import cnn_chain
from t2w_jax.weights.permute import permute_flat
from t2w_jax.weights.permute import permute_params
from t2w_jax.weights.permute import random_permutation
from t2w_jax.weights.permute import sample_perms
from t2w_jax.weights.tokenizer import BlockTokenizer

__all__ = [
    "BlockTokenizer",
    "LayerNorms",
    "ParamLayout",
    "cnn_chain",
    "layer_stats",
    "permute_flat",
    "permute_params",
    "random_permutation",
    "sample_perms",
]

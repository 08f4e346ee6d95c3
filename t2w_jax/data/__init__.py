"""t2w_jax.data: image datasets as numpy arrays, loaded by name.

    from t2w_jax import data
    ds = data.load_dataset("shapes", image_size=16)   # the embedded dataset
    ds.class_names[:2]                                 # ('red circle', 'red square')
"""

from t2w_jax.data.registry import known_datasets
from t2w_jax.data.registry import load_dataset
from t2w_jax.data.registry import register
from t2w_jax.data.types import ImageDataset

__all__ = ["ImageDataset", "known_datasets", "load_dataset", "register"]

"""t2w_jax: text-to-weights diffusion in JAX/Flax."""
import pathlib

import setuptools

_REQS = [
    line.strip()
    for line in pathlib.Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setuptools.setup(
    name="t2w_jax",
    version="0.1.0",
    description="Text2Weight in JAX/Flax: generate network weights from a text description.",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["t2w_jax", "t2w_jax.*"]),
    python_requires=">=3.10",
    install_requires=_REQS,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3"],
        # Only needed to *prepare* CIFAR-100 with tfds; reading needs no TensorFlow.
        "tf": ["tensorflow-cpu>=2.16"],
    },
)

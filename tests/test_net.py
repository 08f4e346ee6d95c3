"""The net object: ``generate`` -> ``Net`` / ``NetBatch``, images in (checked, resized or
refused), logits and class names out, ``save`` / ``load_net`` exact, and ``load_net``'s one
line for every file that is not a saved net."""
import os
import pickle

import jax
import numpy as np
import pytest

from t2w_jax import api
from t2w_jax import net as net_lib
from t2w_jax.data.types import resize_images
from t2w_jax.errors import ConfigError, MissingError
from t2w_jax.zoo import cnn as cnn_lib
from t2w_jax.zoo import family as family_lib

TEXT = "red circle, blue star and green heart"
NAMES = ("red circle", "blue star", "green heart")


@pytest.fixture(scope="module")
def gen(tiny_generator_dir):
  return api.load(tiny_generator_dir)


@pytest.fixture(scope="module")
def net(gen):
  return api.generate(gen, TEXT, rng=jax.random.PRNGKey(0))


def _images(n, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_public_names_are_importable_from_the_package():
  import t2w_jax
  from t2w_jax import (Net, NetBatch, enhance, few_shot, fuse, generate, load,  # noqa: F401
                       load_net)
  assert t2w_jax.generate is api.generate and t2w_jax.load_net is net_lib.load_net
  assert t2w_jax.few_shot is api.few_shot and t2w_jax.Net is net_lib.Net
  with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
    t2w_jax.nonsense  # noqa: B018


def test_generate_gives_one_net_or_an_indexable_batch(gen, net):
  assert isinstance(net, net_lib.Net)
  assert net.class_names == NAMES and net.num_classes == 3
  assert net.image_size == gen.spec.image_size
  np.testing.assert_array_equal(net.class_emb, api.class_embeddings(gen, TEXT))
  assert api.ParamLayout.from_params(net.params) == gen.layout
  nets = api.generate(gen, TEXT, rng=jax.random.PRNGKey(0), num_samples=3)
  assert isinstance(nets, net_lib.NetBatch) and len(nets) == 3
  listed = list(nets)
  assert len(listed) == 3 and all(isinstance(n, net_lib.Net) for n in listed)
  for i in range(3):
    _same_params(nets[i].params, jax.tree.map(lambda a, i=i: a[i], nets.params))
    _same_params(api.take(nets, i), nets[i].params)  # the earlier API's spelling
    assert nets[i].class_names == NAMES
  _same_params(nets[-1].params, nets[2].params)
  assert not np.allclose(np.asarray(gen.layout.flatten(nets[0].params)),
                         np.asarray(gen.layout.flatten(nets[1].params)))
  with pytest.raises(IndexError, match="net 3 of a batch of 3"):
    nets[3]  # noqa: B018
  with pytest.raises(IndexError):
    nets[-4]  # noqa: B018
  with pytest.raises(TypeError, match="indexed by int"):
    nets["0"]  # noqa: B018
  # average=True is one net: the mean of the samples the same key draws.
  avg = api.generate(gen, TEXT, rng=jax.random.PRNGKey(0), num_samples=3, average=True)
  assert isinstance(avg, net_lib.Net)
  np.testing.assert_allclose(np.asarray(gen.layout.flatten(avg.params)),
                             np.asarray(jax.vmap(gen.layout.flatten)(nets.params)).mean(0),
                             atol=1e-6)
  assert jax.block_until_ready(nets) is nets
  # Short reprs: the task, not the arrays.
  assert repr(net) == (f"Net(classes={list(NAMES)}, image_size={net.image_size}, "
                       f"parameters={gen.layout.total:,})")
  assert repr(nets) == f"NetBatch(3 nets, classes={list(NAMES)}, image_size={net.image_size})"


def test_logits_and_predictions(net):
  size = net.image_size
  images = _images(6, size)
  logits = net(images)
  want = net.module.apply({"params": net.params}, images, net.class_emb)
  assert logits.shape == (6, 3)
  np.testing.assert_allclose(logits, np.asarray(want), atol=1e-5)  # jitted vs eager
  # Float images in [0, 1] are the same images.
  np.testing.assert_allclose(net(images.astype(np.float32) / 255), logits, atol=1e-4)
  np.testing.assert_allclose(net(images.astype(np.int64)), logits, atol=0)
  assert net.predict(images) == [NAMES[i] for i in np.argmax(logits, -1)]
  # One image in, one answer out.
  np.testing.assert_allclose(net(images[2]), logits[2], atol=1e-5)
  assert net.predict(images[2]) == NAMES[int(np.argmax(logits[2]))]
  assert net(images[:0]).shape == (0, 3) and net.predict(images[:0]) == []


def test_other_sizes_are_resized_like_the_datasets_or_refused_when_strict(net):
  size = net.image_size
  big = _images(4, 2 * size, seed=1)
  np.testing.assert_allclose(net(big), net(resize_images(big, size)), atol=0)
  odd = np.random.default_rng(2).random((3, size + 5, size - 3, 3), np.float32)
  np.testing.assert_allclose(net(odd), net(resize_images(odd, size)), atol=0)
  assert net(odd).shape == (3, 3)
  # Float and uint8 copies of one image resize alike (to within the uint8 rounding).
  np.testing.assert_allclose(resize_images(big.astype(np.float32) / 255, size),
                             resize_images(big, size) / 255, atol=1 / 255 + 1e-6)
  with pytest.raises(ConfigError, match=rf"images are {2 * size}x{2 * size}; this net takes "
                     rf"{size}x{size} \(strict=True"):
    net(big, strict=True)
  with pytest.raises(ConfigError, match="strict=True"):
    net.predict(big[0], strict=True)
  np.testing.assert_allclose(net(big[:, ::2, ::2], strict=True), net(big[:, ::2, ::2]), atol=0)


@pytest.mark.parametrize("images, match", [
    (np.zeros((16, 16), np.uint8), r"one image \(H, W, 3\) or a batch \(N, H, W, 3\)"),
    (np.zeros((1, 2, 16, 16, 3), np.uint8), r"got shape \(1, 2, 16, 16, 3\)"),
    (np.zeros((2, 16, 16, 1), np.uint8), "grayscale: repeat it"),
    (np.zeros((2, 16, 16, 4), np.uint8), r"RGBA: drop the alpha channel"),
    (np.zeros((2, 3, 16, 16), np.uint8), "channels first"),
    (np.zeros((2, 16, 0, 3), np.uint8), "no pixels"),
    (np.full((2, 16, 16, 3), 200.0, np.float32), r"\[0, 1\].*0\.\.255 values\? pass uint8"),
    (np.full((2, 16, 16, 3), -0.5), r"float images must hold values in \[0, 1\]"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), "NaN or infinite"),
    (np.full((2, 16, 16, 3), 300, np.int32), r"values in 0\.\.255, got int32 values 300"),
    (np.full((2, 16, 16, 3), -1, np.int16), r"values in 0\.\.255"),
    (np.ones((2, 16, 16, 3), bool), "uint8 .* or float .*, got dtype bool"),
    (np.ones((2, 16, 16, 3), np.complex64), "got dtype complex64"),
])
def test_images_the_net_was_not_made_for_are_refused(net, images, match):
  with pytest.raises(ConfigError, match=match) as e:
    net(images)
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match=match):
    net.predict(images)


def test_save_and_load_net_round_trip(gen, net, tmp_path):
  path = str(tmp_path / "net.npz")
  net.save(path)
  back = api.load_net(path)
  assert isinstance(back, net_lib.Net)
  _same_params(back.params, net.params)
  assert back.class_names == net.class_names and back.image_size == net.image_size
  np.testing.assert_array_equal(back.class_emb, net.class_emb)
  assert back.info == {"cnn": gen.spec.cnn, "encoder": gen.spec.encoder,
                       "template": gen.spec.template}
  images = _images(5, 2 * net.image_size)
  np.testing.assert_array_equal(back(images), net(images))
  # The name is the caller's (no suffix added) and no temporary file is left beside it.
  net.save(str(tmp_path / "plain"))
  _same_params(api.load_net(str(tmp_path / "plain")).params, net.params)
  assert sorted(os.listdir(tmp_path)) == ["net.npz", "plain"]
  # The earlier API's save_net writes the same file as Net.save.
  api.save_net(str(tmp_path / "old.npz"), gen, net.params, TEXT)
  _same_params(api.load_net(str(tmp_path / "old.npz")).params, net.params)
  with pytest.raises(MissingError, match="directory .* does not exist"):
    net.save(str(tmp_path / "no" / "net.npz"))
  with pytest.raises(ConfigError, match="is a directory"):
    net.save(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["net.npz", "old.npz", "plain"]


def test_adapter_family_net_round_trips_with_its_trunk(tmp_path):
  c = {"family": "adapter", "trunk_widths": (4, 8), "trunk_strides": (1, 2), "bottleneck": 3,
       "logit_scale": 10.0, "embed_dim": 6}
  trunk = family_lib.build_trunk(c, 6)
  adapter = family_lib.build_subtask_net(c, 6)
  trunk_params = cnn_lib.init_params(trunk, jax.random.PRNGKey(0), 8)
  params = cnn_lib.init_params(adapter, jax.random.PRNGKey(1), 8)
  module = family_lib.TrunkedNet(trunk, trunk_params, adapter)
  emb = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
  net = net_lib.Net(params, module, ["cat", "dog"], emb, 8, {"cnn": c})
  images = _images(3, 8)
  # Jitted against eager: the same function, up to float rounding.
  np.testing.assert_allclose(net(images), np.asarray(module.apply({"params": params}, images,
                                                                  emb)), atol=1e-5)
  path = str(tmp_path / "adapter.npz")
  net.save(path)
  back = api.load_net(path)
  assert isinstance(back.module, family_lib.TrunkedNet)
  _same_params(back.module.trunk_params, trunk_params)
  _same_params(back.params, params)
  np.testing.assert_array_equal(back(images), net(images))


def _write(path, what):
  """Files that are not saved nets, each as a user might hand one over."""
  rng = np.random.default_rng(0)
  if what == "random bytes":
    with open(path, "wb") as f:
      f.write(rng.bytes(300))
  elif what == "text":
    with open(path, "w") as f:
      f.write("weights = [1, 2, 3]\n")
  elif what == "pickle":
    with open(path, "wb") as f:
      pickle.dump({"weights": [1.0, 2.0]}, f)
  elif what == "npy array":
    with open(path, "wb") as f:
      np.save(f, rng.normal(size=(4, 4)))
  elif what == "npy of objects":
    with open(path, "wb") as f:
      np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  elif what == "npz of something else":
    with open(path, "wb") as f:
      np.savez(f, images=np.zeros((2, 3)), labels=np.arange(2))
  elif what == "npz of objects":
    with open(path, "wb") as f:
      np.savez(f, weights=np.zeros(3), class_emb=np.zeros((1, 2)),
               meta=np.array([{"layout": 1}], dtype=object))
  elif what == "meta not JSON":
    with open(path, "wb") as f:
      np.savez(f, weights=np.zeros(3), class_emb=np.zeros((1, 2)), meta=np.array("{oops"))
  elif what == "truncated":
    raise AssertionError("written by the test from a real net")


@pytest.mark.parametrize("what, why", [
    ("random bytes", "not an .npz archive"),
    ("text", "not an .npz archive"),
    ("pickle", "not an .npz archive"),
    ("npy array", "not an .npz archive"),
    ("npy of objects", "not an .npz archive"),
    ("npz of something else", "it lacks weights, class_emb, meta; it holds images, labels"),
    ("npz of objects", "unreadable contents"),
    ("meta not JSON", "unreadable contents: JSONDecodeError"),
])
def test_load_net_names_the_file_and_what_it_expected(tmp_path, what, why):
  path = str(tmp_path / "thing.npz")
  _write(path, what)
  with pytest.raises(ConfigError) as e:
    api.load_net(path)
  msg = str(e.value)
  assert msg.startswith(f"{path} is not a saved net (") and why in msg, msg
  assert msg.endswith("expected an .npz written by Net.save or launch/generate.py")
  assert "\n" not in msg and "pickle" not in msg


def test_load_net_refuses_missing_damaged_and_mismatched_files(net, tmp_path):
  missing = str(tmp_path / "nowhere.npz")
  with pytest.raises(MissingError, match=f"{missing}: no such file"):
    api.load_net(missing)
  with pytest.raises(ConfigError, match="is not a saved net \\(a directory\\)"):
    api.load_net(str(tmp_path))
  good = str(tmp_path / "net.npz")
  net.save(good)
  with open(good, "rb") as f:
    data = f.read()
  cut = str(tmp_path / "cut.npz")
  with open(cut, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ConfigError, match=f"{cut} is not a saved net"):
    api.load_net(cut)
  with np.load(good) as z:
    parts = {k: z[k] for k in z.files}
  short = str(tmp_path / "short.npz")
  np.savez(short, **dict(parts, weights=parts["weights"][:-1]))
  with pytest.raises(ConfigError, match=r"weights for a layout of \d+ values"):
    api.load_net(short)
  other = str(tmp_path / "other.npz")
  np.savez(other, **dict(parts, meta=np.array(str(parts["meta"]).replace(
      '"format": "t2w_jax.net"', '"format": "something.else"'))))
  with pytest.raises(ConfigError, match="format 'something.else'"):
    api.load_net(other)


def test_enhance_and_take_accept_nets(gen, net):
  same = api.enhance(gen, net, t=0, rng=jax.random.PRNGKey(0))  # text: the net's classes
  assert isinstance(same, net_lib.Net) and same.class_names == NAMES
  _same_params(same.params, net.params)
  _same_params(api.take(net, 0), net.params)
  with pytest.raises(ConfigError, match="text is needed to enhance bare params"):
    api.enhance(gen, net.params, t=0, rng=jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match="save_net writes one net"):
    api.save_net("unused.npz", gen, api.generate(gen, TEXT, rng=jax.random.PRNGKey(0),
                                                 num_samples=2).params, TEXT)


def test_sampling_params_are_the_kernels_cast_once_per_params(gen):
  """A bf16 generator samples from its kernels cast to bf16, made once per params object
  (new params, new cast); a float32 one from its params themselves."""
  import dataclasses
  import jax.numpy as jnp
  assert api.Generator(gen.spec, gen.params).sampling_params is gen.params
  model = dict(gen.spec.config["model"], dtype="bfloat16")
  g = api.Generator(dataclasses.replace(gen.spec, config=dict(gen.spec.config, model=model)),
                    gen.params)
  cast = g.sampling_params
  assert cast is g.sampling_params
  from t2w_jax.models import dit, layers
  leaves = jax.tree_util.tree_leaves_with_path(cast)

  def low(p, x):
    return layers.projection_kernel_inputs(p, x.shape) and not dit.on_conditioning_path(p)
  kernels = [x for p, x in leaves if low(p, x)]
  assert kernels and all(x.dtype == jnp.bfloat16 for x in kernels)
  # Everything else (the per-token projections and the conditioning path, used in
  # float32, among it) stays float32.
  assert any(dit.on_conditioning_path(p) for p, _ in leaves)
  assert len(kernels) < len(leaves)
  assert all(x.dtype == jnp.float32 for p, x in leaves if not low(p, x))
  g.params = jax.tree.map(lambda x: x + 1.0, gen.params)
  assert g.sampling_params is not cast
  a = jax.tree.leaves(g.sampling_params)[0]
  np.testing.assert_allclose(np.asarray(a, np.float32),
                             np.asarray(jax.tree.leaves(cast)[0], np.float32) + 1.0, rtol=1e-2)

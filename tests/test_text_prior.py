"""Tests for prompt templates, the text prior and the embedding cache (no model needed)."""

import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2w_jax import text

# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("description, names", [
    ("tulip, rose and bus", ["tulip", "rose", "bus"]),
    ("tulip;rose ; bus", ["tulip", "rose", "bus"]),
    ("tulip, rose, and bus.", ["tulip", "rose", "bus"]),
    ("Tulip AND rose", ["Tulip", "rose"]),
    ("  maple tree ,, sweet pepper\nbus ", ["maple tree", "sweet pepper", "bus"]),
    ("dolphin", ["dolphin"]),
    ("sandal, and", ["sandal"]),
    ("rose, rose", ["rose", "rose"]),
    ("candle and band", ["candle", "band"]),  # "and" inside a word is not a separator
])
def test_split_description(description, names):
  assert text.split_description(description) == names


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_split_description_rejects_empty(bad):
  with pytest.raises(ValueError, match="empty description"):
    text.split_description(bad)


def test_split_description_rejects_only_separators():
  with pytest.raises(ValueError, match="names no class"):
    text.split_description(" , ; and ,")


def test_apply_template():
  assert text.DEFAULT_TEMPLATE == "a photo of a {}"
  assert text.apply_template(["tulip", "maple_tree"]) == [
      "a photo of a tulip", "a photo of a maple tree"]
  assert text.apply_template(("bus",), "a blurry photo of the {}.") == [
      "a blurry photo of the bus."]
  assert text.apply_template([]) == []
  with pytest.raises(ValueError, match="exactly one"):
    text.apply_template(["bus"], "a photo")
  with pytest.raises(ValueError, match="exactly one"):
    text.apply_template(["bus"], "{} and {}")
  with pytest.raises(ValueError, match="fields other"):
    text.apply_template(["bus"], "{} of {name}")
  with pytest.raises(ValueError, match="empty class name"):
    text.apply_template(["bus", " _ "])
  with pytest.raises(TypeError, match="split_description"):
    text.apply_template("tulip, rose")


# ---------------------------------------------------------------- prior


def _unit_rows(rng, k, d):
  x = rng.normal(size=(k, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_prior(emb, temperature):
  """Reference: softmax_i(cos(e_i, mean_j e_j) / T), written out in numpy."""
  mean = emb.mean(axis=0)
  cos = emb @ mean / (np.linalg.norm(emb, axis=1) * np.linalg.norm(mean))
  z = np.exp((cos - cos.max()) / temperature)
  return z / z.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_prior_weights_match_reference_and_sum_to_one(temperature):
  emb = _unit_rows(np.random.default_rng(0), 5, 12)
  w = np.asarray(text.prior_weights(emb, temperature=temperature))
  np.testing.assert_allclose(w, _numpy_prior(emb, temperature), rtol=1e-5, atol=1e-7)
  assert abs(w.sum() - 1) < 1e-6 and (w > 0).all()


def test_lower_temperature_is_sharper():
  emb = _unit_rows(np.random.default_rng(1), 6, 8)
  w1 = np.asarray(text.prior_weights(emb, temperature=1.0))
  w01 = np.asarray(text.prior_weights(emb, temperature=0.1))
  assert w01.max() > w1.max() and np.argmax(w01) == np.argmax(w1)
  with pytest.raises(ValueError, match="temperature"):
    text.prior_weights(emb, temperature=0.0)


def test_prior_masking_and_padding_invariance():
  rng = np.random.default_rng(2)
  emb = _unit_rows(rng, 3, 10)
  # Padded to k=6 with garbage rows (NaN included) in between the real ones.
  padded = rng.normal(size=(6, 10)).astype(np.float32) * 5
  padded[1] = np.nan
  where = [0, 2, 5]
  padded[where] = emb
  mask = np.zeros(6, bool)
  mask[where] = True

  w = np.asarray(text.prior_weights(padded, mask))
  np.testing.assert_array_equal(w[~mask], 0.0)  # exactly zero
  np.testing.assert_allclose(w[mask], np.asarray(text.prior_weights(emb)), atol=1e-6)
  assert abs(w.sum() - 1) < 1e-6

  f = np.asarray(text.fuse(padded, mask))
  np.testing.assert_allclose(f, np.asarray(text.fuse(emb)), atol=1e-6)

  lp = np.asarray(text.log_prior(padded, mask))
  np.testing.assert_allclose(lp[mask], np.log(w[mask]), atol=1e-5)
  np.testing.assert_array_equal(lp[~mask], text.MASKED_LOG_PRIOR)
  assert np.isfinite(lp).all()


def test_all_masked_gives_zeros_not_nan():
  emb = _unit_rows(np.random.default_rng(3), 4, 5)
  mask = np.zeros(4, bool)
  assert np.asarray(text.prior_weights(emb, mask)).tolist() == [0.0] * 4
  assert np.isfinite(np.asarray(text.log_prior(emb, mask))).all()
  np.testing.assert_array_equal(np.asarray(text.fuse(emb, mask)), 0.0)


def test_prior_permutation_equivariance():
  rng = np.random.default_rng(4)
  emb = _unit_rows(rng, 7, 9)
  mask = np.array([1, 1, 0, 1, 1, 0, 1], bool)
  perm = rng.permutation(7)
  w = np.asarray(text.prior_weights(emb, mask, temperature=0.3))
  wp = np.asarray(text.prior_weights(emb[perm], mask[perm], temperature=0.3))
  np.testing.assert_allclose(wp, w[perm], atol=1e-6)
  lp = np.asarray(text.log_prior(emb, mask))
  np.testing.assert_allclose(np.asarray(text.log_prior(emb[perm], mask[perm])), lp[perm],
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(text.fuse(emb[perm], mask[perm])),
                             np.asarray(text.fuse(emb, mask)), atol=1e-6)


def test_fuse_is_normalised_prior_weighted_sum():
  emb = _unit_rows(np.random.default_rng(5), 4, 6)
  f = np.asarray(text.fuse(emb, temperature=0.5))
  assert abs(np.linalg.norm(f) - 1) < 1e-6
  expected = _numpy_prior(emb, 0.5) @ emb
  np.testing.assert_allclose(f, expected / np.linalg.norm(expected), atol=1e-6)
  # One class: the task vector is that class.
  np.testing.assert_allclose(np.asarray(text.fuse(emb[:1])), emb[0], atol=1e-6)


def test_prior_under_jit_vmap_and_batch_dims():
  rng = np.random.default_rng(6)
  emb = np.stack([_unit_rows(rng, 5, 8) for _ in range(3)])
  mask = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 0, 0, 0]], bool)
  rows = np.stack([np.asarray(text.prior_weights(e, m)) for e, m in zip(emb, mask)])
  vmapped = jax.jit(jax.vmap(text.prior_weights))(jnp.asarray(emb), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(vmapped), rows, atol=1e-6)
  # Leading batch dims work without vmap, for all three functions.
  np.testing.assert_allclose(np.asarray(text.prior_weights(emb, mask)), rows, atol=1e-6)
  fused = np.asarray(jax.jit(text.fuse)(emb, mask))
  assert fused.shape == (3, 8)
  np.testing.assert_allclose(fused[2], np.asarray(text.fuse(emb[2, :2])), atol=1e-6)
  assert np.asarray(text.log_prior(emb, mask)).shape == (3, 5)


def test_prior_rejects_bad_shapes():
  emb = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match="mask shape"):
    text.prior_weights(emb, np.ones(4, bool))
  with pytest.raises(ValueError, match=r"\(\.\.\., k, d\)"):
    text.fuse(np.ones(4, np.float32))


def test_prior_gradients_are_finite_with_padding():
  emb = _unit_rows(np.random.default_rng(7), 4, 6)
  mask = np.array([1, 1, 1, 0], bool)
  g = jax.grad(lambda e: text.fuse(e, mask).sum() + text.log_prior(e, mask)[0])(
      jnp.asarray(emb))
  assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_array_equal(np.asarray(g)[3], 0.0)  # padding gets no gradient


# ---------------------------------------------------------------- cache


class _FakeEncoder:
  """Deterministic pseudo-embeddings per text; counts what it is asked to encode."""

  def __init__(self, name="fake:v1", dim=4):
    self.name = name
    self.dim = dim
    self.calls = []

  def encode(self, texts):
    texts = list(texts)
    self.calls.append(texts)
    rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim)
            for t in texts]
    out = np.asarray(rows, np.float32).reshape(len(texts), self.dim)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_cache_encodes_only_missing_names():
  enc = _FakeEncoder()
  assert isinstance(enc, text.TextEncoder)
  cache = text.EmbeddingCache(enc)
  a = cache.get(["tulip", "maple_tree", "tulip"])
  assert enc.calls == [["a photo of a tulip", "a photo of a maple tree"]]  # once each
  np.testing.assert_array_equal(a, enc.encode(["a photo of a tulip", "a photo of a maple tree",
                                               "a photo of a tulip"]))
  enc.calls.clear()
  b = cache.get(["maple tree", "bus", "tulip"])
  assert enc.calls == [["a photo of a bus"]]
  np.testing.assert_array_equal(b[[0, 2]], a[[1, 0]])
  enc.calls.clear()
  cache.get(["bus", "tulip"])
  assert enc.calls == []
  assert len(cache) == 3 and "maple_tree" in cache and "rose" not in cache
  assert cache.get([]).shape == (0, 4)


def test_cache_save_load_round_trip(tmp_path):
  enc = _FakeEncoder()
  cache = text.EmbeddingCache(enc, template="a drawing of a {}")
  emb = cache.get(["tulip", "rose"])
  path = str(tmp_path / "sub" / "emb.npz")
  assert cache.save(path) == path
  assert sorted(os.listdir(tmp_path / "sub")) == ["emb.npz"]  # no temporary left over

  enc2 = _FakeEncoder()
  loaded = text.EmbeddingCache.load(path, encoder=enc2)
  assert loaded.template == "a drawing of a {}" and loaded.encoder_name == "fake:v1"
  np.testing.assert_array_equal(loaded.get(["rose", "tulip"]), emb[::-1])
  assert enc2.calls == []
  loaded.get(["bus"])
  assert enc2.calls == [["a drawing of a bus"]]
  loaded.save()  # back to the file it came from
  assert len(text.EmbeddingCache.load(path)) == 3

  # Constructing with an existing path fills the cache from it too.
  again = text.EmbeddingCache(_FakeEncoder(), template="a drawing of a {}", path=path)
  assert again.names == ["tulip", "rose", "bus"]


def test_cache_refuses_other_encoder_or_template(tmp_path):
  path = str(tmp_path / "emb.npz")
  cache = text.EmbeddingCache(_FakeEncoder("fake:v1"))
  cache.get(["tulip"])
  cache.save(path)
  with pytest.raises(ValueError, match=r"'fake:v1'.*'fake:v2'"):
    text.EmbeddingCache.load(path, encoder=_FakeEncoder("fake:v2"))
  with pytest.raises(ValueError, match=r"'fake:v1'.*'fake:v2'"):
    text.EmbeddingCache(_FakeEncoder("fake:v2"), path=path)
  with pytest.raises(ValueError, match="template"):
    text.EmbeddingCache.load(path, encoder=_FakeEncoder("fake:v1"), template="itap of a {}")
  with pytest.raises(ValueError, match="dim"):
    text.EmbeddingCache.load(path, encoder=_FakeEncoder("fake:v1", dim=8))


def test_read_only_cache_and_bad_files(tmp_path):
  path = str(tmp_path / "emb.npz")
  cache = text.EmbeddingCache(_FakeEncoder())
  cache.get(["tulip"])
  cache.save(path)
  ro = text.EmbeddingCache.load(path)
  assert ro.encoder is None and ro.dim == 4
  assert ro.get(["tulip"]).shape == (1, 4)
  with pytest.raises(KeyError, match="rose"):
    ro.get(["rose"])
  with pytest.raises(FileNotFoundError):
    text.EmbeddingCache.load(str(tmp_path / "missing.npz"))
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="not an embedding cache"):
    text.EmbeddingCache.load(str(junk))
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="not an embedding cache"):
    text.EmbeddingCache.load(str(tmp_path / "other.npz"))
  with pytest.raises(ValueError, match="needs an encoder"):
    text.EmbeddingCache(None)
  with pytest.raises(ValueError, match="needs a path"):
    text.EmbeddingCache(_FakeEncoder()).save()

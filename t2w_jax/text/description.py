"""A task description as people write it -> the task's class names.

    parse_description("red circle vs blue star vs green heart")
        -> ["red circle", "blue star", "green heart"]
    parse_description("a classifier for red circle, blue star and green heart")
        -> ["red circle", "blue star", "green heart"]
    parse_description("tell a black and white cat from a dog",
                      known=["black and white cat", "dog"])
        -> ["black and white cat", "dog"]

Understood: lists separated by commas, semicolons, newlines, "|", "&", "and", "or",
"vs"/"vs."/"versus", "/" (with an Oxford comma or not); a lead-in before the list ("a
classifier for", "classify", "tell ... from ...", "distinguish ... from/and ...", "sort my
photos into", "I need a model that recognises", "is it ...", a label ending in a colon);
leading articles, bullets and surrounding quotes; any case. Known class names (a corpus's)
are matched first, case-insensitively and in the plural too, so a known name that contains
a separator ("black and white cat") stays whole and comes back in its known spelling.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from t2w_jax.errors import ConfigError
from t2w_jax.text.prompts import clean_class_name
from t2w_jax.text.prompts import split_description

# Separators other than the commas, semicolons, newlines and "and" of split_description.
_ALTERNATIVES = re.compile(r"\s+(?:or|vs\.?|v\.|versus|and/or)\s+|\s*[/|&]\s*",
                           flags=re.IGNORECASE)
# Any separator: what ends the first piece, the one a lead-in can be in.
_ANY_SEPARATOR = re.compile(r"[,;\n/|&]|\s(?:and|or|vs\.?|v\.|versus|from)\s",
                            flags=re.IGNORECASE)
# Lead-ins, searched in the first piece only (so a class name later in the list is never
# eaten); everything up to the end of the last one found is dropped. The first group
# marks the verbs after which "from" separates two classes ("tell A from B").
_LEAD_IN = re.compile(
    r"\b(?:"
    r"(?P<contrast>tell(?:s|ing)?(?:\s+the\s+difference)?(?:\s+apart)?(?:\s+between)?|"
    r"(?:distinguish|differentiat|discriminat|separat)\w*(?:\s+between)?)|"
    r"(?:classif(?:y|ies|ying)|sort(?:s|ing)?|group(?:s|ing)?|divid(?:e|es|ing)|split(?:s|ting)?)"
    r"(?:\s+[\w']+){0,4}?\s+(?:into|as)|"
    r"classif(?:y|ies|ying|ier|iers)(?:\s+(?:for|of|between|on|over))?|"
    r"recogni[sz](?:e|es|ing)|detect(?:s|ing)?|identif(?:y|ies|ying)|"
    r"(?:pictures?|photos?|images?|examples?)\s+of|"
    r"(?:is|whether)\s+(?:it|this|that)(?:\s+is)?|"
    r"(?:model|net|network)\s+(?:for|of)|"
    r"between"
    r")\s+", flags=re.IGNORECASE)
_FROM = re.compile(r"\s+from\s+", flags=re.IGNORECASE)
# What a sentence may end with after its last class: "tell cats and dogs apart".
_TAIL = re.compile(r"\s+(?:apart|from\s+each\s+other|from\s+one\s+another)\s*[.!?]*\s*$",
                   flags=re.IGNORECASE)
# What a piece may start with: articles, a left-over conjunction, a list bullet.
_PIECE_HEAD = re.compile(r"^(?:(?:a|an|the|both|either|or|and)\s+|[-*\u2022]\s*|\d+[.)]\s+)+",
                         flags=re.IGNORECASE)
_QUOTES = "\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb"
# A stand-in for a known class name while the text is split: no letter, space or
# separator, so no pattern above can match inside it.
_SLOT = "\x00{}\x00"
_SLOT_RE = re.compile("\x00(\\d+)\x00")


def _known_pattern(known: Sequence[str]) -> re.Pattern | None:
  """One regex matching any known name (longest first), in any case, singular or plural."""
  alternatives = []
  for name in sorted(known, key=len, reverse=True):
    words = [re.escape(w) for w in name.split()]
    last = words[-1]
    plural = (rf"(?:{last[:-1]}(?:y|ys|ies))" if name.endswith("y") and len(name) > 1
              else rf"(?:{last}(?:e?s)?)")
    alternatives.append(r"\s+".join(words[:-1] + [plural]))
  if not alternatives:
    return None
  return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", flags=re.IGNORECASE)


def _canonical(known: Sequence[str]) -> dict[str, str]:
  """Lower-case spellings -> the known spelling: each name and the plurals that
  ``_known_pattern`` matches, so that a matched plural maps back to its name."""
  table = {}
  for name in known:
    low = name.lower()
    for form in (low, low + "s", low + "es", low[:-1] + "ies" if low.endswith("y") else low):
      table.setdefault(form, name)
  return table


# Plurals the suffix rules below get wrong (dataset class names among them).
_IRREGULAR = {"mice": "mouse", "buses": "bus", "men": "man", "women": "woman",
              "children": "child", "people": "person", "geese": "goose", "teeth": "tooth",
              "feet": "foot", "leaves": "leaf", "wolves": "wolf", "knives": "knife",
              "shelves": "shelf", "wives": "wife", "lives": "life", "fish": "fish",
              "sheep": "sheep", "deer": "deer", "cacti": "cactus", "fungi": "fungus",
              "houses": "house", "horses": "horse", "roses": "rose", "glasses": "glasses"}


def singularize(word: str) -> str:
  """A small English singulariser for the last word of a class name ("crosses" -> "cross")."""
  w = word
  low = w.lower()
  if low in _IRREGULAR:
    return _IRREGULAR[low]
  if len(low) <= 3 or low.endswith(("ss", "us", "is")):
    return w
  if low.endswith("ies"):
    return w[:-3] + "y"
  if low.endswith(("sses", "ches", "shes", "xes", "zes")):
    return w[:-2]
  if low.endswith("s"):
    return w[:-1]
  return w


def _clean_piece(piece: str) -> str:
  piece = piece.strip().strip(_QUOTES).strip()
  piece = _PIECE_HEAD.sub("", piece).strip().strip(_QUOTES)
  return piece.rstrip(" .!?:").strip().strip(_QUOTES).strip()


def _split(body: str) -> list[str]:
  """Splits the list part of a description on every separator."""
  if not body.strip():
    return []
  try:
    return split_description(_ALTERNATIVES.sub(", ", body))
  except ValueError:  # separators only
    return []


def parse_description(text: str, known: Iterable[str] | None = None, *,
                      min_classes: int = 2, singular: bool = False) -> list[str]:
  """Parses a free-form task description into class names.

  Args:
    text: the description, e.g. "cats vs dogs", "a classifier for tulip, rose and bus",
      "tell a cat from a dog", one class per line.
    known: class names to prefer (a corpus's): a known name is kept whole even when it
      contains a separator ("black and white cat"), matched in any case and in the plural
      ("Red Circles"), and returned in its known spelling. Other names keep the user's
      spelling (underscores as spaces, whitespace collapsed).
    min_classes: the fewest class names accepted (a classifier needs two).
    singular: put the last word of each name not in ``known`` in the singular ("red
      circles" -> "red circle"; ``singularize``), as class prompts are ("a photo of a {}").

  Returns:
    The class names, in the order written.

  Raises:
    ConfigError (a ValueError): the text is empty, names no class, names fewer than
      ``min_classes`` classes (the message shows what was parsed), or names a class twice.
    TypeError: ``text`` is not a str.
  """
  if not isinstance(text, str):
    raise TypeError(f"description must be a str, got {type(text).__name__}: {text!r}")
  body = text.strip().strip(_QUOTES).strip()
  if not body:
    raise ConfigError(f"empty description {text!r}: name the classes, e.g. "
                      "'tulip, rose and bus'")
  known = [clean_class_name(n) for n in (known or ())]
  slots: list[str] = []
  pattern = _known_pattern(known)
  if pattern is not None:
    def _slot(m: re.Match) -> str:
      slots.append(m.group(0))
      return _SLOT.format(len(slots) - 1)
    body = pattern.sub(_slot, body)

  # "Classify: apple; banana": the list follows the colon.
  _, colon, tail = body.partition(":")
  if colon and tail.strip():
    body = tail
  body = _TAIL.sub("", body.strip())
  # A lead-in can only be in the first piece: up to the first separator.
  first = _ANY_SEPARATOR.search(body)
  first_end = first.start() if first else len(body)
  lead_ins = list(_LEAD_IN.finditer(body, 0, first_end + 1))
  contrast = False
  if lead_ins:
    body = body[lead_ins[-1].end():]
    contrast = any(m.group("contrast") for m in lead_ins)
  if contrast:  # "tell A from B", "distinguish A from B"
    body = _FROM.sub(", ", body)

  table = _canonical(known)
  names = []
  for piece in _split(body):
    piece = _clean_piece(piece)
    piece = _SLOT_RE.sub(lambda m: slots[int(m.group(1))], piece)
    if piece:
      name = clean_class_name(piece)
      if name.lower() in table:
        name = table[name.lower()]
      elif singular:
        head, _, last = name.rpartition(" ")
        name = f"{head} {singularize(last)}" if head else singularize(last)
      names.append(name)
  if not names:
    raise ConfigError(f"description {text!r} names no class")
  seen = set()
  for n in names:
    if n.lower() in seen:
      raise ConfigError(f"description {text!r} names {n!r} twice (parsed as {names})")
    seen.add(n.lower())
  require_classes(names, text, min_classes)
  return names


def require_classes(names: Sequence[str], text, min_classes: int = 2) -> None:
  """Refuses a task of fewer than ``min_classes`` classes, showing what was parsed.

  Args:
    names: the parsed class names.
    text: what the user gave (a description or a list), for the message.
    min_classes: the fewest class names accepted.

  Raises:
    ConfigError (a ValueError): fewer than ``min_classes`` names.
  """
  if len(names) < min_classes:
    raise ConfigError(
        f"description {text!r} was parsed as {len(names)} "
        f"class{'es' if len(names) != 1 else ''} {list(names)}; a classifier needs at least "
        f"{min_classes}: separate the class names with commas, 'and', 'or' or 'vs' (e.g. "
        "'tulip, rose and bus')")

"""Prompt templates and task-description parsing.

A task is described by its class names ("tulip, rose and bus"). Each class name is put
into a prompt template ("a photo of a tulip") before encoding, as CLIP zero-shot
classifiers and the PyTorch Text2Weight do.
"""

from __future__ import annotations

import re
from typing import Sequence

DEFAULT_TEMPLATE = "a photo of a {}"

# Separators between class names: commas, semicolons, newlines, and the word "and".
_SEPARATORS = re.compile(r"[,;\n]|\s+and\s+", flags=re.IGNORECASE)
# A leading "and " left over from an Oxford comma ("tulip, rose, and bus").
_LEADING_AND = re.compile(r"^and(\s+|$)", flags=re.IGNORECASE)


def clean_class_name(name: str) -> str:
  """Makes a dataset class name readable: "maple_tree" -> "maple tree".

  Args:
    name: a class name as a dataset spells it.

  Returns:
    The name with underscores as spaces and runs of whitespace collapsed.

  Raises:
    ValueError: the name is empty or blank.
  """
  if not isinstance(name, str):
    raise TypeError(f"class name must be a str, got {type(name).__name__}: {name!r}")
  cleaned = " ".join(name.replace("_", " ").split())
  if not cleaned:
    raise ValueError(f"empty class name {name!r}")
  return cleaned


def check_template(template: str) -> str:
  """Checks that a template has exactly one "{}" slot and returns it.

  Raises:
    ValueError: the template has no slot, several slots, or named/indexed fields.
  """
  if not isinstance(template, str) or template.count("{}") != 1:
    raise ValueError(f"prompt template must contain exactly one '{{}}', got {template!r}")
  try:
    template.format("x")
  except (IndexError, KeyError, ValueError) as e:
    raise ValueError(f"prompt template {template!r} has fields other than one '{{}}'") from e
  return template


def apply_template(class_names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
  """Puts each class name into the template.

  Args:
    class_names: class names; underscores become spaces (see `clean_class_name`).
    template: a format string with exactly one "{}".

  Returns:
    One prompt per class name, in order.

  Raises:
    ValueError: an empty class name or a malformed template.
    TypeError: `class_names` is a single string.
  """
  if isinstance(class_names, str):
    raise TypeError(f"class_names must be a sequence of names, got the string {class_names!r}; "
                    "use split_description() to parse a description")
  check_template(template)
  return [template.format(clean_class_name(n)) for n in class_names]


def split_description(text: str) -> list[str]:
  """Splits a plain list of class names.

  The building block of ``text.parse_description``, which reads descriptions as people
  write them ("A vs B", "a classifier for A, B and C") and checks the class count.

  "tulip, rose and bus" -> ["tulip", "rose", "bus"]. Separators are commas, semicolons,
  newlines and the word "and" (any case); pieces are stripped of whitespace and of
  trailing full stops; empty pieces are dropped; order and duplicates are kept.

  Args:
    text: the description.

  Returns:
    The class names.

  Raises:
    ValueError: the text is empty or blank, or holds only separators.
  """
  if not isinstance(text, str):
    raise TypeError(f"description must be a str, got {type(text).__name__}: {text!r}")
  if not text.strip():
    raise ValueError(f"empty description {text!r}: name at least one class, "
                     "e.g. 'tulip, rose and bus'")
  names = []
  for piece in _SEPARATORS.split(text):
    piece = _LEADING_AND.sub("", piece.strip()).strip().rstrip(".").strip()
    if piece:
      names.append(piece)
  if not names:
    raise ValueError(f"description {text!r} names no class")
  return names

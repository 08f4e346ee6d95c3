"""Task descriptions as people write them -> class names (``text.parse_description``)."""

import pytest

import t2w_jax
from t2w_jax.errors import ConfigError
from t2w_jax.text import parse_description
from t2w_jax.text import require_classes

RBG = ["red circle", "blue star", "green heart"]


@pytest.mark.parametrize("text, names", [
    # Lists.
    ("red circle, blue star and green heart", RBG),
    ("red circle, blue star, and green heart", RBG),
    ("red circle, blue star, green heart", RBG),
    ("red circle; blue star; green heart", RBG),
    ("red circle\nblue star\ngreen heart\n", RBG),
    ("red circle | blue star | green heart", RBG),
    ("red circle & blue star & green heart", RBG),
    ("- red circle\n- blue star\n- green heart", RBG),
    ("1. red circle\n2. blue star\n3. green heart", RBG),
    # Alternatives.
    ("red circle vs blue star vs green heart", RBG),
    ("red circle vs. blue star vs green heart", RBG),
    ("red circle versus blue star versus green heart", RBG),
    ("red circle or blue star or green heart", RBG),
    ("red circle, blue star, or green heart", RBG),
    ("red circle, blue star or green heart?", RBG),
    ("either a red circle or a blue star", RBG[:2]),
    ("red circle/blue star/green heart", RBG),
    ("red circle / blue star", RBG[:2]),
    ("cat and/or dog", ["cat", "dog"]),
    ("A vs B", ["A", "B"]),
    ("A vs. B vs C", ["A", "B", "C"]),
    ("A/B", ["A", "B"]),
    # Lead-ins.
    ("a classifier for red circle, blue star and green heart", RBG),
    ("A classifier of red circle vs blue star", RBG[:2]),
    ("classify red circle and blue star", RBG[:2]),
    ("Classify: red circle; blue star; green heart", RBG),
    ("classes:\nred circle\nblue star", RBG[:2]),
    ("tell red circle from blue star", RBG[:2]),
    ("tell a red circle from a blue star", RBG[:2]),
    ("tell apart red circle and blue star", RBG[:2]),
    ("tell red circle and blue star apart", RBG[:2]),
    ("tell the difference between a red circle and a blue star", RBG[:2]),
    ("distinguish red circle from blue star", RBG[:2]),
    ("distinguish between red circle, blue star and green heart", RBG),
    ("a classifier that tells apart red circle, blue star and green heart", RBG),
    ("I need a model that recognises a red circle, a blue star and a green heart", RBG),
    ("Sort my photos into red circle, blue star or green heart.", RBG),
    ("a net for red circle vs blue star", RBG[:2]),
    ("pictures of: red circle, blue star", RBG[:2]),
    ("a photo of a red circle or a blue star", RBG[:2]),
    ("Is it a red circle or a blue star?", RBG[:2]),
    # Quotes, whitespace, case.
    ('"red circle vs blue star"', RBG[:2]),
    ("'red circle', 'blue star' and 'green heart'", RBG),
    ("\u201cred circle\u201d or \u201cblue star\u201d", RBG[:2]),
    ("   red circle ,,  blue   star  ", RBG[:2]),
    ("Red Circle VS Blue Star", ["Red Circle", "Blue Star"]),
    ("RED CIRCLE AND BLUE STAR", ["RED CIRCLE", "BLUE STAR"]),
    ("maple_tree and oak_tree", ["maple tree", "oak tree"]),
    # "and" or a lead-in word inside a word, or a noun like a verb, is not a separator.
    ("candle and band", ["candle", "band"]),
    ("orange and orchid", ["orange", "orchid"]),
    ("metal detector vs lamp", ["metal detector", "lamp"]),
    ("vase or vsauce", ["vase", "vsauce"]),
    # Without known names, "and" separates.
    ("black and white cat", ["black", "white cat"]),
])
def test_descriptions_as_people_write_them(text, names):
  assert parse_description(text) == names


KNOWN = ["black and white cat", "dog", "t-shirt/top", "trouser", "red circle", "blue star",
         "butterfly", "bus"]


@pytest.mark.parametrize("text, names", [
    ("black and white cat vs dog", ["black and white cat", "dog"]),
    ("black and white cat and dog", ["black and white cat", "dog"]),
    ("dog, black and white cat", ["dog", "black and white cat"]),
    ("tell a black and white cat from a dog", ["black and white cat", "dog"]),
    ("a classifier for black and white cats and dogs", ["black and white cat", "dog"]),
    ("Black And White Cat or Dog", ["black and white cat", "dog"]),
    ("T-Shirt/Top vs trousers", ["t-shirt/top", "trouser"]),
    ("Red Circles, BLUE STARS", ["red circle", "blue star"]),
    ("butterflies or buses", ["butterfly", "bus"]),
    # Unknown names around known ones keep the user's spelling.
    ("dog vs grey cat", ["dog", "grey cat"]),
    ("big red circle and blue star", ["big red circle", "blue star"]),
])
def test_known_class_names_are_preferred(text, names):
  assert parse_description(text, known=KNOWN) == names


@pytest.mark.parametrize("text, match", [
    ("", "empty description"),
    ("   \n\t", "empty description"),
    ('""', "empty description"),
    (" , ; and ,", "names no class"),
    ("vs", r"parsed as 1 class \['vs'\]"),
    ("red circle", r"parsed as 1 class \['red circle'\].*at least 2"),
    # A known multi-word name is one class, and the message shows it.
    ("a classifier for dolphin", r"parsed as 1 class \['dolphin'\]"),
    ("red circle, red circle", "names 'red circle' twice"),
    ("Dog or dog", "names 'dog' twice"),
])
def test_descriptions_that_name_too_few_classes_are_refused(text, match):
  with pytest.raises(ConfigError, match=match):
    parse_description(text)


def test_a_known_name_with_and_alone_is_one_class():
  with pytest.raises(ConfigError, match=r"parsed as 1 class \['black and white cat'\]"):
    parse_description("black and white cats", known=KNOWN)
  assert parse_description("black and white cats", known=KNOWN,
                           min_classes=1) == ["black and white cat"]


def test_min_classes_and_the_count_check():
  assert parse_description("dolphin", min_classes=1) == ["dolphin"]
  with pytest.raises(ConfigError, match="at least 3"):
    parse_description("cat vs dog", min_classes=3)
  require_classes(["a", "b"], "a, b")
  with pytest.raises(ConfigError, match=r"\['a'\]"):
    require_classes(["a"], ["a"])


def test_not_a_string_is_a_type_error():
  with pytest.raises(TypeError, match="must be a str"):
    parse_description(b"cat vs dog")


def test_exported_from_the_package():
  assert t2w_jax.parse_description is parse_description
  assert "parse_description" in t2w_jax.__all__

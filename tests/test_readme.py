"""The README's Python quickstart runs as written, against a tiny trained run at the path it
names (``runs/default``, relative to the directory it runs in)."""
import contextlib
import io
import os
import re

import jax
import numpy as np
import pytest

from t2w_jax import net as net_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- tested: tests/test_readme.py runs this block as written -->"


def marked_blocks(text: str) -> list[str]:
  """The python code blocks that directly follow the marker line, in order."""
  pattern = re.escape(MARKER) + r"\n```python\n(.*?)\n```"
  return re.findall(pattern, text, flags=re.S)


def test_marked_blocks_are_found():
  text = f"a\n{MARKER}\n```python\nx = 1\n```\n```python\ny = 2\n```\n{MARKER}\n```python\nz\n```"
  assert marked_blocks(text) == ["x = 1", "z"]
  assert marked_blocks("```python\nx = 1\n```") == []


# Slow tier: it builds the procedural data set at full size, as the README's user does.
@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tiny_generator_dir, tmp_path, monkeypatch):
  with open(os.path.join(ROOT, "README.md")) as f:
    blocks = marked_blocks(f.read())
  assert len(blocks) == 1, "the README marks one quickstart block for this test"
  code = blocks[0]
  assert 'load("runs/default")' in code  # the path the test puts the tiny run at
  os.makedirs(tmp_path / "runs")
  os.symlink(tiny_generator_dir, tmp_path / "runs" / "default")
  monkeypatch.chdir(tmp_path)
  namespace, out = {"__name__": "__readme__"}, io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  (the README's own code)
  net, images, pred = namespace["net"], namespace["images"], namespace["pred"]
  assert isinstance(net, net_lib.Net)
  assert net.class_names == ("red circle", "blue star", "green heart")
  assert len(images) > 0 and images.shape[1] != net.image_size  # it did resize them
  assert len(pred) == len(images) and set(pred) <= set(net.class_names)
  # The data set's first build prints its own progress; the snippet prints one line.
  printed = re.findall(r"^accuracy ([0-9.]+)$", out.getvalue(), flags=re.M)
  assert len(printed) == 1 and 0 <= float(printed[0]) <= 1, out.getvalue()
  # What it saved is the net it made.
  back = net_lib.load_net("net.npz")
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(net.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert back.predict(images) == pred

"""What the PyTorch drivers share: they run under another Python, with the standard library.

``torch_driver.py`` and ``torch_corpus_driver.py`` are scripts run by ``--torch_python``
(their own directory is on ``sys.path``, so they import this module by its bare name);
``harness.run_driver`` runs them and reads back the JSON that ``write_result`` writes.
"""
import json
import os
import traceback
from typing import Any, Callable


def one_line(e: BaseException) -> str:
  """An exception as one line: its type and message."""
  return " ".join(f"{type(e).__name__}: {e}".split())


def write_result(run: Callable[[], dict], path: str, **crash_fields: Any) -> int:
  """Writes ``run()``'s result to ``path`` atomically; a crash is written as a result too.

  A crash inside the timed code is reported, not hidden: {"status": "crashed", "reason",
  "traceback", **crash_fields}. Returns 0 (the exit status; the result says what happened).
  """
  try:
    result = run()
  except Exception as e:  # report, not hide
    result = {"status": "crashed", **crash_fields, "reason": one_line(e),
              "traceback": traceback.format_exc()[-4000:]}
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return 0

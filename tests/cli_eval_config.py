"""A fast evaluation config for the command-line smoke test (tests/test_cli.py): the tiny
eval config with only the baselines and one generated net per task, no novelty."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import eval as eval_config  # noqa: E402


def get_config():
  c = eval_config.get_config("tiny")
  for key in list(c.evals):
    if key not in ("baselines", "generated"):
      del c.evals[key]
  c.evals.generated.update(num_samples=1, novelty=False)
  c.max_tasks = 2
  return c

"""Generate one subtask net for two tasks together ("A and B") and save it as a .npz.

  python launch/fuse.py --workdir=runs/default --text_a="red circle and blue star" \
      --text_b="green heart, yellow cross" --out=/tmp/fused.npz

The net classifies the union of the two class lists (A's classes, then B's that A lacks:
``t2w_jax.api.fuse``). Read it back with ``t2w_jax.load_net(path)``: a ``Net``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from t2w_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_TEXT_A = flags.DEFINE_string("text_a", None, "task A's class names, e.g. 'tulip and rose'")
_TEXT_B = flags.DEFINE_string("text_b", None, "task B's class names, e.g. 'bus, train'")
_OUT = flags.DEFINE_string("out", None, "output .npz")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_STEPS = flags.DEFINE_integer("steps", None, "sampler steps (default: config)")
_GUIDANCE = flags.DEFINE_float("guidance", None, "guidance scale (default: config)")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["ddim", "ddpm"], "sampler (default: config)")
flags.mark_flags_as_required(["workdir", "text_a", "text_b", "out"])


def main(argv):
  del argv
  import jax
  from t2w_jax import api
  cli.check_output_file(_OUT.value)  # before the minutes of loading and sampling
  union = api.union_classes(_TEXT_A.value, _TEXT_B.value)  # likewise for bad descriptions
  gen = api.load(_WORKDIR.value)
  net = api.fuse(gen, _TEXT_A.value, _TEXT_B.value, rng=jax.random.PRNGKey(_SEED.value),
                 steps=_STEPS.value, guidance=_GUIDANCE.value, sampler=_SAMPLER.value)
  net.save(_OUT.value)
  logging.info("wrote %s (%d classes: %s)", _OUT.value, len(union), ", ".join(union))


if __name__ == "__main__":
  app.run(cli.user_errors_exit(main), flags_parser=cli.parse_flags)

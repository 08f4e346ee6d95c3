"""Enhance a saved net with its task's text: noise it to level t, denoise it, save the result.

  python launch/enhance.py --workdir=runs/default --net=/tmp/net.npz --t=400 --steps=5 \
      --out=/tmp/enhanced.npz

``--net`` is a file written by ``launch/generate.py`` or ``Net.save`` (its class names are
the text unless ``--text`` is given); t = 0 writes the net unchanged. When to use it and at
which t: docs/results.md, "Applications".
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from t2w_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_NET = flags.DEFINE_string("net", None, "the net to enhance (.npz from generate/Net.save)")
_T = flags.DEFINE_integer("t", None, "noise level, 0 (unchanged) to the generator's T")
_TEXT = flags.DEFINE_string("text", None, "class names (default: the net file's)")
_OUT = flags.DEFINE_string("out", None, "output .npz")
_SEED = flags.DEFINE_integer("seed", 0, "noise seed")
_STEPS = flags.DEFINE_integer("steps", None, "DDIM steps from t (default: config)")
flags.mark_flags_as_required(["workdir", "net", "t", "out"])


def main(argv):
  del argv
  import jax
  from t2w_jax import api
  cli.check_output_file(_OUT.value)
  net = api.load_net(_NET.value)
  text = _TEXT.value if _TEXT.value is not None else list(net.class_names)
  api.class_names(text)  # an empty description fails before the generator loads
  gen = api.load(_WORKDIR.value)
  out = api.enhance(gen, net, text, t=_T.value, rng=jax.random.PRNGKey(_SEED.value),
                    steps=_STEPS.value)
  out.save(_OUT.value)
  logging.info("wrote %s (t=%d)", _OUT.value, _T.value)


if __name__ == "__main__":
  app.run(cli.user_errors_exit(main), flags_parser=cli.parse_flags)

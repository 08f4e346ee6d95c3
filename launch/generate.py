"""Generate a subtask net from a text description and save it as a standalone .npz.

  python launch/generate.py --workdir=runs/default --text="red circle vs blue star vs green heart" \
      --out=/tmp/net.npz

The text is read as ``t2w_jax.parse_description`` reads it ("A, B and C", "A vs B", "A or B",
"tell A from B", "a classifier for A, B and C", one class per line ...), preferring the class
names of the generator's corpus; the class list it was read as is printed before sampling.

Read it back with ``t2w_jax.load_net(path)``: the same ``Net`` (``net.predict(images)``,
``net(images)``, ``net.params``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from t2w_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_TEXT = flags.DEFINE_string("text", None, "the task: class names, e.g. 'tulip, rose and bus', "
                            "'cats vs dogs', 'a classifier for tulip, rose and bus'")
_OUT = flags.DEFINE_string("out", None, "output .npz")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_STEPS = flags.DEFINE_integer("steps", None, "sampler steps (default: config)")
_GUIDANCE = flags.DEFINE_float("guidance", None, "guidance scale (default: config)")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["ddim", "ddpm"], "sampler (default: config)")
flags.mark_flags_as_required(["workdir", "text", "out"])


def main(argv):
  del argv
  import jax
  from t2w_jax import api
  from t2w_jax import text as text_lib
  cli.check_output_file(_OUT.value)  # before the minutes of loading and sampling
  text_lib.parse_description(_TEXT.value)  # likewise: a text of fewer than 2 classes fails now
  gen = api.load(_WORKDIR.value)
  names = text_lib.parse_description(_TEXT.value, known=cli.corpus_class_names(gen))
  print(f"classes ({len(names)}): {names}", flush=True)
  net = api.generate(gen, names, rng=jax.random.PRNGKey(_SEED.value),
                     steps=_STEPS.value, guidance=_GUIDANCE.value, sampler=_SAMPLER.value)
  net.save(_OUT.value)
  logging.info("wrote %s (%d classes: %s)", _OUT.value, net.num_classes,
               ", ".join(net.class_names))


if __name__ == "__main__":
  app.run(cli.user_errors_exit(main), flags_parser=cli.parse_flags)

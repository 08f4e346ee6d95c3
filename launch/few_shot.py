"""A net for a task from its text and a few labelled images, saved.

  python launch/few_shot.py --workdir=runs/default --text="red circle and blue star" \
      --shots=/tmp/shots.npz --out=/tmp/net.npz [--method=generator|finetune]

``--method=generator`` (the default): the generator's net conditioned on the images
(``t2w_jax.generate_with_shots``: the zero-shot net refined on them with the generator as
the prior); ``--method=finetune``: the generated net fine-tuned on them (``few_shot``).

``--shots`` is an .npz with ``images`` (N, H, W, 3) uint8 at the generator's image size and
``labels`` (N,) ints, label i being the i-th class of ``--text``. A fifth of each class's
images (at least one) are held out to early-stop on; nothing else is used.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from t2w_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training run directory")
_TEXT = flags.DEFINE_string("text", None, "class names, e.g. 'tulip, rose and bus'")
_SHOTS = flags.DEFINE_string("shots", None, ".npz with images and labels")
_OUT = flags.DEFINE_string("out", None, "output .npz")
_SEED = flags.DEFINE_integer("seed", 0, "seed (the generated start, the split, the batches)")
_METHOD = flags.DEFINE_enum("method", "generator", ["generator", "finetune"],
                            "generator: generate_with_shots; finetune: few_shot")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None,
                                  "step cap (--method=finetune); default: few_shot's")
flags.mark_flags_as_required(["workdir", "text", "shots", "out"])


def main(argv):
  del argv
  import jax
  import numpy as np
  from t2w_jax import api
  from t2w_jax.errors import ConfigError
  cli.check_output_file(_OUT.value)
  api.class_names(_TEXT.value)
  with np.load(_SHOTS.value) as z:
    missing = {"images", "labels"} - set(z.files)
    if missing:
      raise ConfigError(f"{_SHOTS.value} lacks {sorted(missing)}; it needs 'images' and "
                        "'labels'")
    images, labels = z["images"], z["labels"]
  gen = api.load(_WORKDIR.value)
  rng = jax.random.PRNGKey(_SEED.value)
  if _METHOD.value == "generator":
    from t2w_jax import shots
    net, info = shots.generate_with_shots(gen, _TEXT.value, images, labels, rng=rng)
  else:
    cap = {} if _MAX_STEPS.value is None else {"max_steps": _MAX_STEPS.value}
    net, info = api.few_shot(gen, _TEXT.value, images, labels, rng=rng, **cap)
  net.save(_OUT.value)
  logging.info("wrote %s: %s", _OUT.value, info)


if __name__ == "__main__":
  app.run(cli.user_errors_exit(main), flags_parser=cli.parse_flags)

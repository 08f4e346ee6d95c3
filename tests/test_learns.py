"""The generator learns something: on a tiny corpus, after a few hundred steps, nets
generated for the seen (training) tasks beat the shared base net on those tasks."""
import os

import jax
import numpy as np

from configs import corpus as corpus_config
from configs import dit as dit_config
from t2w_jax import api
from t2w_jax.evaluate.context import EvalContext
from t2w_jax.train import loop
from t2w_jax.zoo import make_corpus as make_corpus_lib


def test_generated_nets_beat_base_on_seen_tasks(tmp_path):
  c = corpus_config.get_config("tiny")
  c.num_devices = 2
  make_corpus_lib.make_corpus(c, str(tmp_path))
  d = dit_config.get_config("tiny")
  d.mesh.data = 2
  d.num_steps = 300
  d.checkpoint_every = 300
  d.learning_rate = 3e-3
  loop.train(d, str(tmp_path))
  ctx = EvalContext.create(os.path.join(tmp_path, "corpus"), gen=api.load(str(tmp_path)))
  rows = ctx.rows("seen")
  tasks = ctx.tasks(rows)
  emb, mask = ctx.class_text(tasks)
  flat = api.sample_flat(ctx.gen, emb, mask, rng=jax.random.PRNGKey(0), steps=10)
  generated = ctx.accuracy(np.asarray(flat), tasks)
  base = ctx.accuracy(np.repeat(ctx.corpus.base[None], len(tasks), 0), tasks)
  # The mean of the seen nets is what a DiT that ignored its text would decode to (the
  # normalisation is centred on it): beating it means the text was used.
  mean_net = np.asarray(ctx.corpus.weights[rows]).mean(0)
  mean = ctx.accuracy(np.repeat(mean_net[None], len(tasks), 0), tasks)
  oracle = np.array([ctx.corpus.records[i]["trained_acc"] for i in rows])
  print(f"generated {generated.mean():.3f} base {base.mean():.3f} mean {mean.mean():.3f} "
        f"oracle {oracle.mean():.3f}")
  assert generated.mean() > base.mean() + 0.05
  assert generated.mean() > mean.mean() + 0.02

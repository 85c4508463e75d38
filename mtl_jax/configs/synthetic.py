"""Default experiment: shared-bottom on the MMoE synthetic data, two tasks, correlation 0.5.

Uses the 'keras_mmoe' preset (c=0.3, 5 random sines, noise std 0.1), whose labels a small
network can learn from 10k examples.  With the paper-default 'google' preset
(``--config.data.synthetic.preset=google``) the high-frequency sines dominate the label
variance and a shared-bottom MLP memorises the training set (test MSE about the label
variance).
"""

from mtl_jax.configs import default


def get_config():
  c = default.get_config()
  c.name = 'synthetic'
  c.data.synthetic.num_tasks = 2
  c.data.synthetic.correlation = 0.5
  c.data.synthetic.preset = 'keras_mmoe'
  c.train.steps = 4000
  c.train.diagnostics_every = 10   # gradient conflicts every 10 steps (ew is loss-only)
  c.eval.every = 500               # validation metrics into metrics.jsonl
  return c

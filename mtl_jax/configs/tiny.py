"""A smoke-test experiment that trains in seconds on a CPU (used by the tests)."""

from mtl_jax.configs import default


def get_config():
  c = default.get_config()
  c.name = 'tiny'
  c.data.synthetic.preset = 'keras_mmoe'
  c.data.synthetic.input_dim = 16
  c.data.synthetic.sizes = (512, 96, 96)
  c.model.mlp.hidden = (16,)
  c.model.tower_hidden = (8,)
  c.train.steps = 30
  c.train.batch_size = 32
  c.train.log_every = 10
  c.train.checkpoint_every = 10
  c.eval.batch_size = 64
  return c

"""Every config key mtl_jax reads, with its default.  Experiment configs override these."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'default'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'
  c.data.num_tasks = 2
  c.data.correlation = 0.5
  c.data.input_dim = 100
  c.data.preset = 'google'
  c.data.num_sines = config_dict.placeholder(int)      # None: the preset's value
  c.data.noise_std = config_dict.placeholder(float)
  c.data.scale = config_dict.placeholder(float)
  c.data.sizes = (10000, 1000, 1000)
  c.data.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'shared_bottom'
  c.model.backbone = 'mlp'
  c.model.hidden = (113,)         # backbone widths
  c.model.tower_hidden = (8,)     # per-task tower widths (before the output layer)
  c.model.dropout = 0.0

  c.weighting = ml_collections.ConfigDict()
  c.weighting.name = 'ew'
  c.weighting.ew = ml_collections.ConfigDict({'reduction': 'sum'})
  # Static weights, one per task in task order (empty: all ones).
  c.weighting.static = ml_collections.ConfigDict({'weights': config_dict.placeholder(tuple)})

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'           # adam | adamw | sgd
  c.optim.lr = 1e-3
  c.optim.schedule = 'constant'   # constant | cosine | warmup_cosine
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0      # adamw only
  c.optim.momentum = 0.9          # sgd only
  c.optim.grad_clip = 0.0         # global-norm clipping; 0: off

  c.train = ml_collections.ConfigDict()
  c.train.steps = 3000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.on_nonfinite = 'skip'   # skip: reject the update and count it | raise
  c.train.num_devices = 0         # devices on the mesh's data axis; 0: all

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1000
  c.eval.splits = ('val', 'test')
  return c

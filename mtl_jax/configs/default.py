"""Every config key mtl_jax reads, with its default.  Experiment configs override these."""

import ml_collections
from ml_collections import config_dict

from mtl_jax._src import models
from mtl_jax._src.data import loaders


def _block(**values) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(values)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'default'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'       # 'synthetic' or loaders.names(): options in c.data.<name>
  c.data.num_tasks = 2
  c.data.correlation = 0.5
  c.data.input_dim = 100
  c.data.preset = 'google'
  c.data.num_sines = config_dict.placeholder(int)      # None: the preset's value
  c.data.noise_std = config_dict.placeholder(float)
  c.data.scale = config_dict.placeholder(float)
  c.data.sizes = (10000, 1000, 1000)
  c.data.seed = 0
  c.data.tasks = ()               # train on these tasks only (e.g. one: a single-task run)
  c.data.per_task_inputs = False  # one input per task ([N, T, D]; e.g. for 'adversarial')
  c.data.domain_shift = 0.0       # per-task input mean shift (needs per_task_inputs)
  c.data.worker_count = 0         # grain worker processes reading training batches; 0: none
  # One block of options per loaded data set (mtl_jax/data/loaders.py), with its defaults.
  for name in loaders.names():
    c.data[name] = _block(**loaders.options(name))

  c.model = ml_collections.ConfigDict()
  c.model.name = 'shared_bottom'  # models.names(); options in the block of the same name
  c.model.backbone = 'mlp'        # models.backbone_names(); options in the block of that name
  c.model.tower_hidden = (8,)     # per-task tower widths (before the output layer)
  c.model.dropout = 0.0
  # One block of options per backbone and per architecture, named after it, with the
  # builder's defaults (shared/reference/architectures.md); overrides below.
  for name in models.backbone_names():
    c.model[name] = _block(**models.backbone_hyperparameters(name))
  for name in models.names():
    c.model[name] = _block(**models.hyperparameters(name))
  c.model.mlp.hidden = (113,)

  c.weighting = ml_collections.ConfigDict()
  c.weighting.name = 'ew'
  c.weighting.mode = 'param'          # per-task gradients of the shared params, or 'rep'
  c.weighting.chunk_size = 0          # tasks per Jacobian chunk; 0: all at once
  c.weighting.head_grads = 'default'  # 'default' (the method's), 'weighted', 'unweighted'
  # One block of hyperparameters per method (shared/reference/weighting.md has the defaults).
  c.weighting.ew = _block(reduction='sum')
  c.weighting.static = _block(weights=config_dict.placeholder(tuple))  # None: all ones
  c.weighting.uw = _block(init=0.0, lr=0.025)
  c.weighting.dwa = _block(steps_per_epoch=0, temperature=2.0)  # 0: the data's epoch
  c.weighting.rlw = _block(match_sum=True)
  c.weighting.gls = _block(eps=1e-8)
  c.weighting.famo = _block(gamma=1e-3, beta=0.025, eps=1e-8, min_losses=0.0, match_sum=True)
  c.weighting.mgda = _block(normalization='none', match_sum=True, max_iters=250)
  c.weighting.pcgrad = _block(reduction='sum')
  c.weighting.cagrad = _block(c=0.4, rescale=1, match_sum=True, max_iters=500)
  c.weighting.nash_mtl = _block(max_norm=1.0, update_every=1, max_iters=20)
  c.weighting.imtl_g = _block(match_sum=True)
  c.weighting.upgrad = _block(match_sum=True, norm_eps=1e-4, reg_eps=1e-4)
  c.weighting.dualproj = _block(match_sum=True, norm_eps=1e-4, reg_eps=1e-4)
  c.weighting.aligned_mtl = _block(scale_mode='min')
  c.weighting.gradnorm = _block(alpha=1.5, lr=0.025, layer='all')

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'           # adam | adamw | sgd
  c.optim.lr = 1e-3
  c.optim.schedule = 'constant'   # constant | cosine | warmup_cosine
  c.optim.warmup_steps = 0
  c.optim.weight_decay = 0.0      # adamw only
  c.optim.momentum = 0.9          # sgd only
  c.optim.grad_clip = 0.0         # global-norm clipping; 0: off

  # Transfer learning (mtl_jax/transfer.py): start the params under `target` from an earlier
  # run's checkpoint, or from an encoder pretrained here first on one task; freeze them or
  # scale their learning rate.
  c.transfer = ml_collections.ConfigDict()
  c.transfer.init_from = ''       # workdir (or checkpoints dir) of an earlier run
  c.transfer.source = 'shared'    # params subtree to take from it
  c.transfer.target = 'shared'    # where it goes in this model (stacked copies broadcast)
  c.transfer.pretrain_task = ''   # pretrain a shared_bottom on this task first (workdir/pretrain)
  c.transfer.pretrain_steps = 1000
  c.transfer.freeze = False       # no updates and no gradients for params under `target`
  c.transfer.lr_ratio = 1.0       # learning-rate multiplier for params under `target`

  c.train = ml_collections.ConfigDict()
  c.train.steps = 3000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.on_nonfinite = 'skip'   # skip: reject the update and count it | raise
  c.train.num_devices = 0         # devices on the mesh's data axis; 0: all
  c.train.task_sampling = 0       # train k random tasks per step (stateless weightings); 0: all

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1000
  c.eval.splits = ('val', 'test')
  # Also train one single-task baseline per task (shared_bottom, one head, same backbone,
  # optimiser and steps; in workdir/baselines/<task>) and report them and Delta-m% in
  # results.json.
  c.eval.baselines = False
  return c

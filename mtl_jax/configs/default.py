"""Every config key mtl_jax reads, with its default.  Experiment configs override these."""

import collections.abc
import inspect
import typing

import ml_collections
from ml_collections import config_dict

from mtl_jax._src import registry

# Optimizers with a config block (``config.optim.<name>``, from optax's signature); any other
# optax optimizer runs by name with optax's defaults.  ``optim.weight_decay`` and
# ``optim.momentum`` apply to every optimizer that takes them.
OPTIMIZER_BLOCKS = ('adam', 'adamw', 'sgd', 'lion', 'lamb', 'nadam', 'radam', 'rmsprop',
                    'adagrad', 'adafactor', 'adabelief', 'yogi', 'amsgrad', 'adamax', 'novograd')
OPTIMIZER_SHORTCUTS = ('weight_decay', 'momentum')


def _placeholder(annotation):
  """A typed None for ``Optional[X]`` (so that the CLI can set it), else a plain None."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  kind = typing.get_origin(args[0]) or args[0] if len(args) == 1 else annotation
  return config_dict.placeholder(kind) if isinstance(kind, type) else None


def _scalar_or_sequence(annotation) -> bool:
  """``Union[float, Sequence[float]]``: one value for every task, or one per task."""
  args = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else ()
  return any(typing.get_origin(a) is collections.abc.Sequence for a in args)


def block(reg: registry.Registry, name: str) -> ml_collections.ConfigDict:
  """The config block of component ``name``: its builder's keyword defaults (lists as
  tuples; None as a placeholder typed by the annotation; a scalar default of a
  scalar-or-sequence parameter as a 1-tuple, so that the command line can give a tuple)."""
  params = inspect.signature(reg.builder(name)).parameters
  values = {}
  for key, default in reg.defaults(name).items():
    if default is None:
      default = _placeholder(params[key].annotation)
    elif isinstance(default, (int, float)) and _scalar_or_sequence(params[key].annotation):
      default = (default,)
    values[key] = tuple(default) if isinstance(default, list) else default
  return ml_collections.ConfigDict(values)


def _optimizer_block(name: str) -> ml_collections.ConfigDict:
  import optax  # pylint: disable=import-outside-toplevel
  params = inspect.signature(getattr(optax, name)).parameters
  return ml_collections.ConfigDict({
      k: p.default for k, p in params.items()
      if k != 'learning_rate' and k not in OPTIMIZER_SHORTCUTS
      and type(p.default) in (bool, int, float, str)})


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'default'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'       # a registered data set; its options in c.data.<name>
  c.data.seed = 0                 # the data set's own randomness (splits, pairs, ...)
  c.data.reseed = False           # True: a run with seed s draws its data with data.seed + s
  c.data.tasks = ()               # train on these tasks only (e.g. one: a single-task run)
  c.data.worker_count = 0         # grain worker processes reading training batches; 0: none
  for name in registry.DATASETS.names():   # one block per data set, its builder's defaults
    c.data[name] = block(registry.DATASETS, name)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'shared_bottom'  # a registered model; its options in c.model.<name>
  c.model.backbone = 'mlp'        # a registered backbone; its options in c.model.<backbone>
  c.model.tower_hidden = (8,)     # per-task tower widths (before the output layer)
  c.model.dropout = 0.0
  for reg in (registry.BACKBONES, registry.MODELS):
    for name in reg.names():
      c.model[name] = block(reg, name)
  c.model.mlp.hidden = (113,)

  c.weighting = ml_collections.ConfigDict()
  c.weighting.name = 'ew'
  c.weighting.mode = 'auto'           # 'auto' (exact, cheapest), 'param', 'gram' or 'rep'
  c.weighting.chunk_size = 0          # tasks per Jacobian chunk; 0: all at once
  c.weighting.head_grads = 'default'  # 'default' (the method's), 'weighted', 'unweighted'
  # Transforms of the method, applied in this order (mtl_jax.weighting.normalize, ...):
  c.weighting.normalize = 'none'      # gradients / n_t first: 'none', 'l2', 'loss', 'loss+'
  c.weighting.log_losses = False      # the method on log L_t (and grad L_t / L_t)
  c.weighting.groups = ''             # per parameter group: '' (off), 'leaf', or regexes
                                      # on parameter paths, comma-separated
  c.weighting.ema = 0.0               # EMA rate of the weights (CR-MOGM's); 0: off
  for name in registry.WEIGHTINGS.names():  # one block per method, its builder's defaults
    c.weighting[name] = block(registry.WEIGHTINGS, name)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'           # any optax optimizer taking a learning_rate
  c.optim.lr = 1e-3
  c.optim.schedule = 'constant'   # constant | cosine | warmup_cosine | plateau
  c.optim.warmup_steps = 0
  # schedule 'plateau' (optax.contrib.reduce_on_plateau, as torch's ReduceLROnPlateau): the
  # lr times `factor` when the sum of the task losses, averaged over `every` steps (0: an
  # epoch), has not improved by `rtol` for `patience` such averages; never below `min_lr`.
  c.optim.plateau = ml_collections.ConfigDict(
      {'factor': 0.1, 'patience': 10, 'rtol': 1e-4, 'cooldown': 0, 'min_lr': 0.0, 'every': 0})
  c.optim.weight_decay = 0.0      # for optimizers that take it (adamw, lion, lamb, ...)
  c.optim.momentum = 0.9          # for optimizers that take it (sgd, ...)
  c.optim.grad_clip = 0.0         # global-norm clipping; 0: off
  for name in OPTIMIZER_BLOCKS:   # keyword arguments of optax.<name>, with optax's defaults
    c.optim[name] = _optimizer_block(name)

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
  c.train.metrics_every = 1       # metrics.jsonl / TensorBoard keep every N-th step (all checked)
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.on_nonfinite = 'skip'   # skip: reject the update and count it | raise
  # Stop (exit status 1) when more than this fraction of the last `rejected_window` updates
  # were rejected as non-finite (1.0: never); warn above `warn_rejected_fraction`.
  c.train.max_rejected_fraction = 0.5
  c.train.warn_rejected_fraction = 0.05
  c.train.rejected_window = 100
  c.train.num_devices = 0         # devices on the mesh's data axis; 0: all
  # A 2-D ('data', 'model') mesh: (data, model) devices (data 0: all the devices left);
  # (): the 1-D ('data',) mesh over num_devices.  The batch is split over 'data'; `shard`
  # splits the state over 'model': 'none' (replicated), 'fsdp' (shared params and their
  # optimizer state, each leaf along its largest divisible axis), 'tasks' (stacked task and
  # expert axes, and the per-task Jacobian's rows; T must divide), 'fsdp+tasks'.
  c.train.mesh_shape = ()
  c.train.shard = 'none'
  # Mixed precision: the model computes in compute_dtype ('float32' | 'bfloat16'); params,
  # optimizer and method state, losses, Gram matrix and solvers stay float32.  grad_dtype
  # 'bfloat16' also stores the per-task gradients (Jacobian rows) in bfloat16.
  c.train.compute_dtype = 'float32'
  c.train.grad_dtype = 'float32'
  c.train.task_sampling = 0       # train k random tasks per step (stateless weightings); 0: all
  # Gradient diagnostics (per-task gradient norms, cosines, conflicting pairs) in the metrics:
  # gradient methods every step (free); loss-only methods every N steps (one Jacobian then).
  c.train.diagnostics_every = 0   # N for loss-only methods; 0: off

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 1000
  c.eval.splits = ('val', 'test')
  c.eval.every = 0                # also evaluate the 'val' split every N steps into metrics.jsonl
  # Also train one single-task baseline per task (shared_bottom, one head, same backbone,
  # optimiser and steps; in workdir/baselines/<task>) and report them and Delta-m% in
  # results.json.
  c.eval.baselines = False
  c.eval.delta_m_metrics = ()     # the metrics Delta-m% and mean rank compare (): all but loss

  # Several processes, one per host, as one run (jax.distributed; README "Several hosts").
  # Unset values come from MTL_JAX_COORDINATOR / MTL_JAX_NUM_PROCESSES / MTL_JAX_PROCESS_ID,
  # then from a cluster launcher (SLURM, Open MPI, TPU on GKE, JAX_COORDINATOR_ADDRESS);
  # with none of them set, one process.  May change when a run resumes.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = 'auto'       # auto: when several processes are set or launched;
                                          # always (Cloud TPU VM slices: jax asks the
                                          # metadata server); never
  c.distributed.coordinator_address = ''  # 'host:port' of process 0, the same for every process
  c.distributed.num_processes = 0         # 0: unset
  c.distributed.process_id = -1           # this process, in [0, num_processes); -1: unset
  c.distributed.local_device_ids = ()     # this process's devices; (): jax's default
  c.distributed.timeout_s = 300           # to reach the coordinator and see every process join
  return c

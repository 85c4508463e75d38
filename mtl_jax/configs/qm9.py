"""QM9, 11 regression targets, with the training set-up of Nash-MTL, FAMO and FairGrad.

Navon et al. (ICML 2022), Liu et al. (NeurIPS 2023) and Ban and Ji (ICML 2024) train the
edge-network MPNN (``--config.model.backbone=mpnn``: width 64, 3 message-passing steps,
Set2Set readout) with one linear head per target on ~110k training molecules: Adam 1e-3,
batch 120, 300 epochs, the learning rate times 0.7 after 5 epochs without improvement (down
to 1e-5), and report each target's test MAE in its own units (energies in meV) and Delta-m%
against single-task baselines.  Here the plateau is judged on each epoch's mean training
loss (the sum of the task losses; the papers use the validation loss), and the test metrics
are those of the last step (the papers take the best validation epoch).

Presets, ``--config=mtl_jax/configs/qm9.py:<preset>``:

* ``paper`` (default): the protocol above, 276,900 steps (a GPU run);
* ``cpu``: the same protocol on 10,000 training molecules for 10 epochs (830 steps), the
  papers' 10,000-molecule validation and test sets; about 10 minutes of ``ew`` on 2 cores;
* ``sweep``: small enough for a methods x seeds x baselines sweep on 2 cores (8 methods,
  11 baselines, 3 seeds in about an hour): 1,200 training molecules, batch 60, 5 epochs (100
  steps), an MPNN of width 32 (edge network 64), 1,000 test molecules (no validation pass).

The cache of the whole data set is built once (about 2 minutes; ``pip install -e '.[qm9]'``).
"""

from mtl_jax.configs import default

TRAIN_MOLECULES = 110831     # 130,831 molecules less the 10,000 test and 10,000 validation
PRESETS = {
    # preset: (training molecules (0: all), epochs, test, validation, mpnn width, edge width)
    'paper': (0, 300, 10000, 10000, 64, 128),
    'cpu': (10000, 10, 10000, 10000, 64, 128),
    'sweep': (1200, 5, 1000, 500, 32, 64),
}


def get_config(preset: str = 'paper'):
  if preset not in PRESETS:
    raise ValueError(f'qm9 config: unknown preset {preset!r}; presets: {", ".join(PRESETS)}')
  train_size, epochs, test, validation, width, edge_width = PRESETS[preset]
  c = default.get_config()
  c.name = f'qm9-{preset}'
  c.data.name = 'qm9'
  c.data.qm9.train_size = train_size
  c.data.qm9.test = test
  c.data.qm9.validation = validation
  c.model.name = 'shared_bottom'
  c.model.backbone = 'mpnn'
  c.model.mpnn.dim = width
  c.model.mpnn.edge_hidden = edge_width
  c.model.tower_hidden = ()          # one linear head per target
  c.weighting.name = 'ew'
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'plateau'
  c.optim.plateau.factor = 0.7
  c.optim.plateau.patience = 5
  c.optim.plateau.min_lr = 1e-5
  c.optim.plateau.every = 0          # an epoch
  c.train.batch_size = 60 if preset == 'sweep' else 120
  steps_per_epoch = (train_size or TRAIN_MOLECULES) // c.train.batch_size   # remainder dropped
  c.train.steps = epochs * steps_per_epoch
  c.train.log_every = min(100, steps_per_epoch)
  c.train.checkpoint_every = 10 * steps_per_epoch
  c.eval.batch_size = 500
  c.eval.splits = ('test',) if preset == 'sweep' else ('val', 'test')
  c.eval.delta_m_metrics = ('mae_unscaled',)     # the papers' figure
  return c

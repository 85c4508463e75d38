"""Tasks and the ordered task collection that fixes the task axis.

Conventions (used everywhere in mtl_jax):

* A batch is ``{'inputs': array or pytree, 'labels': {task: [B, ...]},
  'masks': {task: [B]} (optional)}``.  A mask of 0 marks a missing label.
* Predictions are a dict keyed by task name, ``{task: [B, out_dim]}``.
* Per-task losses and weights are arrays ``[T]`` in the order of the ``TaskSet``.

Tasks with the same kind, output size, loss and metrics form a *group*; the losses of a group
are computed in one ``vmap`` over its stacked predictions, so the traced program grows with
the number of groups, not the number of tasks.
"""

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax._src import losses as losses_lib
from mtl_jax._src import metrics as metrics_lib

KINDS = ('regression', 'binary', 'multiclass', 'multilabel')


@dataclasses.dataclass(frozen=True)
class Task:
  """One task.

  Attributes:
    name: unique name; the key of its labels, masks and predictions.
    kind: one of ``KINDS``.
    out_dim: size of the model output for this task (classes for multiclass).
    loss: per-sample loss ``(pred [B, out_dim], label) -> [B]``.
    metrics: evaluation metrics, each with its direction.
  """
  name: str
  kind: str
  out_dim: int
  loss: Callable
  metrics: tuple[metrics_lib.Metric, ...]

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f'task name must be a non-empty string, got {self.name!r}')
    if self.kind not in KINDS:
      raise ValueError(f"task '{self.name}': unknown kind {self.kind!r}; expected one of {KINDS}")
    if int(self.out_dim) < 1 or (self.kind == 'multiclass' and self.out_dim < 2):
      raise ValueError(f"task '{self.name}': bad out_dim {self.out_dim} for kind {self.kind}")
    names = [m.name for m in self.metrics]
    if len(set(names)) != len(names):
      raise ValueError(f"task '{self.name}': duplicate metric names {names}")

  @property
  def label_shape(self) -> tuple[int, ...]:
    """Per-sample label shape after canonicalisation."""
    return () if self.kind == 'multiclass' else (self.out_dim,)


def regression(name: str, dim: int = 1) -> Task:
  """Squared-error regression of a ``dim``-vector; metrics mse, mae (lower is better)."""
  return Task(name, 'regression', dim, losses_lib.squared_error,
              (metrics_lib.MSE, metrics_lib.MAE))


def binary(name: str) -> Task:
  """Binary classification from one logit with sigmoid cross-entropy; metric accuracy."""
  return Task(name, 'binary', 1, losses_lib.sigmoid_cross_entropy,
              (metrics_lib.BINARY_ACCURACY, metrics_lib.BINARY_CROSS_ENTROPY))


def multiclass(name: str, num_classes: int) -> Task:
  """Softmax classification with integer labels; metric accuracy."""
  return Task(name, 'multiclass', num_classes, losses_lib.softmax_cross_entropy,
              (metrics_lib.MULTICLASS_ACCURACY, metrics_lib.CROSS_ENTROPY))


def multilabel(name: str, num_labels: int) -> Task:
  """Independent sigmoid outputs with {0, 1} labels; metric per-label accuracy."""
  return Task(name, 'multilabel', num_labels, losses_lib.sigmoid_cross_entropy,
              (metrics_lib.BINARY_ACCURACY, metrics_lib.BINARY_CROSS_ENTROPY))


@dataclasses.dataclass(frozen=True)
class TaskGroup:
  """Tasks that share kind, output size, loss and metrics, in task-axis order."""
  indices: tuple[int, ...]
  names: tuple[str, ...]
  prototype: Task


class TaskSet:
  """An ordered collection of tasks; its order is the task axis of every ``[T]`` array."""

  def __init__(self, tasks: Sequence[Task]):
    tasks = tuple(tasks)
    if not tasks:
      raise ValueError('a TaskSet needs at least one task')
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise ValueError(f'duplicate task names: {dupes}')
    self.tasks = tasks
    self.names = tuple(names)
    groups: dict = {}
    for i, t in enumerate(tasks):
      key = (t.kind, t.out_dim, t.loss, t.metrics)
      groups.setdefault(key, []).append(i)
    self.groups = tuple(
        TaskGroup(tuple(ix), tuple(names[i] for i in ix), tasks[ix[0]]) for ix in groups.values())
    order = [i for g in self.groups for i in g.indices]
    self._from_group_order = np.argsort(order)  # group-concatenated -> task order

  def __len__(self):
    return len(self.tasks)

  def __iter__(self):
    return iter(self.tasks)

  def __getitem__(self, name: str) -> Task:
    return self.tasks[self.index(name)]

  def __repr__(self):
    return f'TaskSet({", ".join(f"{t.name}:{t.kind}[{t.out_dim}]" for t in self.tasks)})'

  def __eq__(self, other):
    return isinstance(other, TaskSet) and self.tasks == other.tasks

  def __hash__(self):
    return hash(self.tasks)

  def ordered(self, predictions: Mapping) -> dict:
    """``predictions`` as a dict in task-axis order (models build them group by group)."""
    return {name: predictions[name] for name in self.names}

  def index(self, name: str) -> int:
    try:
      return self.names.index(name)
    except ValueError:
      raise KeyError(f'unknown task {name!r}; tasks are {list(self.names)}') from None

  def vector(self, values: Mapping[str, float] | Sequence[float], field: str) -> np.ndarray:
    """A ``[T]`` vector from a dict keyed by task name or a sequence in task order."""
    if isinstance(values, Mapping):
      unknown = sorted(set(values) - set(self.names))
      if unknown:
        raise ValueError(f'{field}: unknown task(s) {unknown}; tasks are {list(self.names)}')
      missing = [n for n in self.names if n not in values]
      if missing:
        raise ValueError(f'{field}: no value for task(s) {missing}')
      values = [values[n] for n in self.names]
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (len(self),):
      raise ValueError(f'{field}: expected {len(self)} values (one per task), got shape '
                       f'{values.shape}')
    return values

  # ---- batch structure ------------------------------------------------------------------

  def check_batch(self, batch: Mapping) -> None:
    """Checks keys and shapes of a batch (works on tracers: values are not read)."""
    if not isinstance(batch, Mapping) or 'inputs' not in batch or 'labels' not in batch:
      raise ValueError("a batch is a dict with keys 'inputs' and 'labels' (and optionally "
                       f"'masks'); got {type(batch).__name__} with keys "
                       f"{list(batch) if isinstance(batch, Mapping) else None}")
    unknown_keys = sorted(set(batch) - {'inputs', 'labels', 'masks'})
    if unknown_keys:
      raise ValueError(f'batch has unknown key(s) {unknown_keys}')
    leaves = jax.tree_util.tree_leaves(batch['inputs'])
    if not leaves:
      raise ValueError("batch['inputs'] is empty")
    size = leaves[0].shape[0]
    for section in ('labels', 'masks'):
      entries = batch.get(section) or {}
      unknown = sorted(set(entries) - set(self.names))
      if unknown:
        raise ValueError(f"batch['{section}'] names unknown task(s) {unknown}; tasks are "
                         f'{list(self.names)}')
    for t in self.tasks:
      if t.name not in batch['labels']:
        raise ValueError(f"batch is missing the label for task '{t.name}' "
                         f"(batch['labels']['{t.name}']); mark missing labels with "
                         f"batch['masks']['{t.name}'] = 0 instead")
      shape = tuple(batch['labels'][t.name].shape)
      ok = shape in {(size,), (size, 1)} if t.out_dim == 1 or t.kind == 'multiclass' \
          else shape == (size,) + t.label_shape
      if not ok:
        raise ValueError(f"task '{t.name}' ({t.kind}, out_dim {t.out_dim}): label shape {shape}"
                         f' does not match batch size {size} and label shape {t.label_shape}')
      mask = (batch.get('masks') or {}).get(t.name)
      if mask is not None and tuple(mask.shape) != (size,):
        raise ValueError(f"task '{t.name}': mask shape {tuple(mask.shape)} != ({size},)")

  def check_values(self, batch: Mapping) -> None:
    """Host-side check that inputs and (unmasked) labels are finite; names the bad field."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch['inputs']):
      arr = np.asarray(leaf)
      if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
        where = 'inputs' + jax.tree_util.keystr(path)
        raise ValueError(f'NaN or inf in batch[{where!r}] at {int((~np.isfinite(arr)).sum())} '
                         'entries')
    masks = batch.get('masks') or {}
    for name in self.names:
      y = np.asarray(batch['labels'][name])
      labelled = (np.asarray(masks[name]).astype(bool) if name in masks
                  else np.ones(len(y), bool))
      if np.issubdtype(y.dtype, np.inexact):
        bad = ~np.isfinite(y).reshape(len(y), -1).all(axis=1) & labelled
        if bad.any():
          raise ValueError(f"task '{name}': NaN or inf in {int(bad.sum())} labelled sample(s); "
                           f"set batch['masks']['{name}'] = 0 for missing labels")
      task = self[name]
      if task.kind in ('binary', 'multilabel'):
        values = y.reshape(len(y), -1)[labelled]
        if values.size and (np.any(values < 0) or np.any(values > 1)):
          raise ValueError(f"task '{name}': {task.kind} labels must be in [0, 1], got values "
                           f'in [{values.min()}, {values.max()}]')
      if task.kind == 'multiclass':
        classes = y.reshape(len(y))[labelled]
        if classes.size and (np.any(classes < 0) or np.any(classes >= task.out_dim) or
                             np.any(classes != np.round(classes))):
          raise ValueError(f"task '{name}': class labels must be integers in [0, "
                           f'{task.out_dim}), got values in [{classes.min()}, {classes.max()}]')

  # ---- vectorised losses and metrics ------------------------------------------------------

  def _stack_group(self, group: TaskGroup, predictions, batch):
    """Stacks a group's predictions [Tg, B, K], labels [Tg, B, ...] and masks [Tg, B]."""
    proto = group.prototype
    masks_in = batch.get('masks') or {}
    preds, labels, masks = [], [], []
    for name in group.names:
      if name not in predictions:
        raise ValueError(f"predictions have no entry for task '{name}'")
      p = predictions[name]
      y = batch['labels'][name]
      size = y.shape[0]
      if p.ndim == 1 and proto.out_dim == 1:
        p = p[:, None]
      if tuple(p.shape) != (size, proto.out_dim):
        raise ValueError(f"task '{name}' ({proto.kind}): prediction shape {tuple(p.shape)} does "
                         f'not match ({size}, {proto.out_dim})')
      if tuple(y.shape) != (size,) + proto.label_shape:
        y = y.reshape((size,) + proto.label_shape)
      dtype = jnp.int32 if proto.kind == 'multiclass' else p.dtype
      if y.dtype != dtype:
        y = y.astype(dtype)
      m = masks_in.get(name)
      m = jnp.ones((size,), bool) if m is None else m if m.dtype == bool else m.astype(bool)
      preds.append(p)
      labels.append(y)
      masks.append(m)
    return jnp.stack(preds), jnp.stack(labels), jnp.stack(masks)

  @staticmethod
  def _sanitize(label, mask):
    """Replaces masked-out labels by 0 so that NaN labels give no NaN gradients."""
    m = mask.reshape(mask.shape + (1,) * (label.ndim - 1))
    return jnp.where(m, label, jnp.zeros_like(label))

  def losses(self, predictions: Mapping, batch: Mapping) -> jax.Array:
    """Per-task masked-mean losses ``[T]``, one ``vmap`` per task group."""
    self.check_batch(batch)
    per_group = []
    for group in self.groups:
      preds, labels, masks = self._stack_group(group, predictions, batch)
      loss_fn = group.prototype.loss

      def task_loss(p, y, m, loss_fn=loss_fn):
        return losses_lib.masked_mean(loss_fn(p, self._sanitize(y, m)), m)

      per_group.append(jax.vmap(task_loss)(preds, labels, masks))
    return jnp.concatenate(per_group)[self._from_group_order]

  def metric_sums(self, predictions: Mapping, batch: Mapping) -> dict:
    """Accumulable metric statistics ``{metric_key: [T_g] sums}`` per group, plus counts.

    Returns a tuple over groups of dicts ``{'count': [Tg], metric.name: [Tg]}`` holding the
    masked per-sample sums; ``finalize_metrics`` turns accumulated sums into values.
    """
    self.check_batch(batch)
    out = []
    for group in self.groups:
      preds, labels, masks = self._stack_group(group, predictions, batch)
      stats = {'count': jnp.sum(masks, axis=1).astype(jnp.float32)}

      def sums(p, y, m, fn):
        return jnp.sum(jnp.where(m, fn(p, self._sanitize(y, m)), 0.0))

      for metric in group.prototype.metrics:
        stats[metric.name] = jax.vmap(lambda p, y, m, fn=metric.per_sample: sums(p, y, m, fn))(
            preds, labels, masks)
      out.append(stats)
    return tuple(out)

  def finalize_metrics(self, sums) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from accumulated ``metric_sums`` (NaN if no label seen)."""
    result = {}
    for group, stats in zip(self.groups, sums):
      stats = jax.device_get(stats)
      for j, name in enumerate(group.names):
        count = float(stats['count'][j])
        result[name] = {
            m.name: float(m.finalize(stats[m.name][j] / count)) if count > 0 else float('nan')
            for m in group.prototype.metrics}
        result[name]['count'] = count
    return {n: result[n] for n in self.names}

  def directions(self) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}``."""
    return {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in self.tasks}

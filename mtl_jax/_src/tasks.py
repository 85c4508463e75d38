"""Tasks and the ordered task collection that fixes the task axis.

Conventions (used everywhere in mtl_jax):

* A batch is ``{'inputs': array or pytree, 'labels': {task: [B, ...]},
  'masks': {task: [B]} (optional)}``.  A mask of 0 marks a missing label.
* Predictions are a dict keyed by task name, ``{task: [B, out_dim]}``.
* Per-task losses and weights are arrays ``[T]`` in the order of the ``TaskSet``.

Tasks with the same kind, output size, loss and metrics form a *group*; the losses of a group
are computed in one ``vmap`` over its stacked predictions, so the traced program grows with
the number of groups, not the number of tasks.

Valid labels and masks (one rule, checked on the host and applied in the jitted step):

* A mask is bool, or a number that is exactly 0 (label missing) or 1 (labelled); a task
  without a mask is labelled everywhere.
* A labelled sample's label must be valid for its task: regression, finite; binary and
  multilabel, every entry in [0, 1]; multiclass, an integer value in [0, K), decided on the
  value given (a float 2.7 is invalid, not class 2).
* A masked-out label (mask 0) is never read: NaN or out-of-range values there are the usual
  encoding of a missing label and are fine.

On the host, ``TaskSet.validate(batch)`` raises a ``ValueError`` on any violation, and on
non-finite float inputs, naming the task, the field (``batch['labels'][task]``,
``batch['masks'][task]``, ``batch['inputs']...``), how many samples and an example value; the
data pipeline runs it on every record it reads.  In the jitted step (hand-made batches,
nothing scanned on the host), ``TaskSet.losses`` and ``metric_sums`` mask out every sample
whose mask is not exactly 0 or 1 or whose labelled label is invalid, so it adds nothing to
the loss or the metrics; ``TaskSet.invalid_labels(batch)`` counts them per task and
``TaskSet.nonfinite_inputs(batch)`` counts the samples with a non-finite float input (those
are not masked out: their predictions are not finite and the step rejects the update).
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


def _example(bad: np.ndarray, values: np.ndarray) -> str:
  """'N sample(s) ..., e.g. V at sample i' for per-entry flags ``bad`` [B, ...] of ``values``."""
  rows = bad.reshape(len(bad), -1)
  i = int(np.argmax(rows.any(axis=1)))
  value = values.reshape(len(values), -1)[i][rows[i]][0]
  return f'{int(rows.any(axis=1).sum())} sample(s), e.g. {value!s} at sample {i}'


def _check_inputs(inputs) -> None:
  """Raises if a float input leaf holds NaN or inf, naming the leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(inputs):
    arr = np.asarray(leaf)
    if jnp.issubdtype(arr.dtype, jnp.inexact) and not np.isfinite(arr).all():
      field = "batch['inputs']" + jax.tree_util.keystr(path)
      bad = ~np.isfinite(arr)
      raise ValueError(f'NaN or inf in {field} at {int(bad.sum())} entries of '
                       f'{_example(bad, arr)}')


def _check_mask(name: str, mask, size: int) -> np.ndarray:
  """The labelled samples [B] of a task whose mask is bool or numbers in {0, 1}; raises on
  any other mask value (0.3, 2, NaN), naming the task and the field."""
  field = f"batch['masks']['{name}']"
  if mask is None:
    return np.ones(size, bool)
  mask = np.asarray(mask)
  if mask.dtype == bool:
    return mask
  if not jnp.issubdtype(mask.dtype, jnp.number):
    raise ValueError(f"task '{name}': {field} must be bool or numbers 0/1, got dtype "
                     f'{mask.dtype}')
  bad = (mask != 0) & (mask != 1)
  if bad.any():
    raise ValueError(f"task '{name}': masks must be 0 or 1 (or bool), got {field} not in "
                     f'{{0, 1}} at {_example(bad, mask)}')
  return mask == 1


def _check_labels(task: Task, y: np.ndarray, labelled: np.ndarray) -> None:
  """Raises if a labelled sample's label is invalid for ``task`` (the module's rule)."""
  name, field = task.name, f"batch['labels']['{task.name}']"
  if y.dtype == bool:
    return
  if not jnp.issubdtype(y.dtype, jnp.number):
    raise ValueError(f"task '{name}': {field} must be numbers, got dtype {y.dtype}")
  rows = y.reshape(len(y), -1)
  at = labelled[:, None]
  if jnp.issubdtype(y.dtype, jnp.inexact):
    bad = ~np.isfinite(rows) & at
    if bad.any():
      raise ValueError(f"task '{name}': NaN or inf in labelled {field} at "
                       f"{_example(bad, rows)}; set batch['masks']['{name}'] = 0 for missing "
                       'labels')
  values = rows[labelled]
  if not values.size or task.kind == 'regression':
    return
  bad = ~_entries_ok(task.kind, task.out_dim, rows, np) & at
  rule = (f'class labels must be integers in [0, {task.out_dim})' if task.kind == 'multiclass'
          else f'{task.kind} labels must be in [0, 1]')
  if bad.any():
    raise ValueError(f"task '{name}': {rule}, got values in [{values.min()!s}, {values.max()!s}]: "
                     f'{field} is invalid at {_example(bad, rows)}')


def _entries_ok(kind: str, out_dim: int, y, xp=jnp):
  """Per entry of the labels ``y`` (as given, not cast): whether it is valid for a task of
  ``kind``: finite; in [0, 1] for binary and multilabel; an integer value in [0, out_dim)
  for multiclass.  NaN fails every comparison, so it is never valid.  ``xp``: ``jnp`` in the
  step, ``np`` for the host check (one rule for both)."""
  if y.dtype == bool:
    return xp.ones(y.shape, bool)
  if kind == 'regression':
    return xp.isfinite(y) if jnp.issubdtype(y.dtype, jnp.inexact) else xp.ones(y.shape, bool)
  if kind == 'multiclass':
    ok = (y >= 0) & (y < out_dim)
    return ok & (y == xp.floor(y)) if jnp.issubdtype(y.dtype, jnp.inexact) else ok
  return (y >= 0) & (y <= 1)


def _labels_ok(kind: str, out_dim: int, y: jax.Array) -> jax.Array:
  """[Tg, B] bool: whether each sample's label ``y`` [Tg, B, ...] is valid (every entry,
  ``_entries_ok``)."""
  return _entries_ok(kind, out_dim, y).all(axis=tuple(range(2, y.ndim)))


@dataclasses.dataclass(frozen=True)
class TaskGroup:
  """Tasks that share kind, output size, loss and metrics, in task-axis order."""
  indices: tuple[int, ...]
  names: tuple[str, ...]
  prototype: Task


class TaskSet:
  """An ordered collection of tasks; its order is the task axis of every ``[T]`` array.

  Labels and masks follow the module docstring's rule: ``validate`` raises on the host where
  it is broken; ``losses`` and ``metric_sums`` mask out the offending samples in the jitted
  step and ``invalid_labels`` counts them (masked-out NaN labels are fine: they are missing).
  """

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
    """Host-side check of the values of a batch whose structure passed ``check_batch``:
    finite float inputs, masks in {0, 1}, valid labelled labels (see the module docstring)."""
    _check_inputs(batch['inputs'])
    masks = batch.get('masks') or {}
    for task in self.tasks:
      y = np.asarray(batch['labels'][task.name])
      labelled = _check_mask(task.name, masks.get(task.name), len(y))
      _check_labels(task, y, labelled)

  def validate(self, batch: Mapping) -> None:
    """Host-side check of a batch: structure (``check_batch``) and values (``check_values``).

    Everything the data pipeline checks on every record, for hand-made batches too: raises a
    ``ValueError`` naming the task, the field, how many samples are bad and an example."""
    self.check_batch(batch)
    self.check_values(batch)

  # ---- vectorised losses and metrics ------------------------------------------------------

  def _group_labels(self, group: TaskGroup, batch):
    """A group's labels [Tg, B, ...], masks [Tg, B] and excluded samples [Tg, B].

    Validity is decided on the labels and masks as given, before any cast (module
    docstring); a sample with a mask not in {0, 1} or an invalid labelled label gets mask
    False.  Labels where the mask is False are replaced by 0 (then multiclass labels are cast
    to int32), so that NaN or out-of-range labels give no NaN values or gradients."""
    proto = group.prototype
    masks_in = batch.get('masks') or {}
    labels, masks = [], []
    for name in group.names:
      y = jnp.asarray(batch['labels'][name])
      size = y.shape[0]
      if tuple(y.shape) != (size,) + proto.label_shape:
        y = y.reshape((size,) + proto.label_shape)
      m = masks_in.get(name)
      labels.append(y)
      masks.append(jnp.ones((size,), bool) if m is None else jnp.asarray(m))
    y, m = jnp.stack(labels), jnp.stack(masks)
    if m.dtype == bool:
      labelled, bad_mask = m, jnp.zeros(m.shape, bool)
    else:
      labelled = m == 1
      bad_mask = ~labelled & (m != 0)
    ok = _labels_ok(proto.kind, proto.out_dim, y)
    mask = labelled & ok
    excluded = bad_mask | (labelled & ~ok)
    y = jnp.where(mask.reshape(mask.shape + (1,) * (y.ndim - 2)), y, jnp.zeros_like(y))
    if proto.kind == 'multiclass':
      y = y.astype(jnp.int32)
    return y, mask, excluded

  @staticmethod
  def _group_predictions(group: TaskGroup, predictions, size: int):
    """A group's stacked predictions [Tg, B, out_dim] (shapes checked)."""
    proto = group.prototype
    preds = []
    for name in group.names:
      if name not in predictions:
        raise ValueError(f"predictions have no entry for task '{name}'")
      p = predictions[name]
      if p.ndim == 1 and proto.out_dim == 1:
        p = p[:, None]
      if tuple(p.shape) != (size, proto.out_dim):
        raise ValueError(f"task '{name}' ({proto.kind}): prediction shape {tuple(p.shape)} does "
                         f'not match ({size}, {proto.out_dim})')
      preds.append(p)
    return jnp.stack(preds)

  def _stack_group(self, group: TaskGroup, predictions, batch):
    """A group's predictions [Tg, B, K], labels [Tg, B, ...] (in the predictions' dtype,
    int32 for multiclass) and masks [Tg, B] (bool, invalid samples masked out)."""
    labels, masks, _ = self._group_labels(group, batch)
    preds = self._group_predictions(group, predictions, labels.shape[1])
    if group.prototype.kind != 'multiclass' and labels.dtype != preds.dtype:
      labels = labels.astype(preds.dtype)
    return preds, labels, masks

  def losses(self, predictions: Mapping, batch: Mapping) -> jax.Array:
    """Per-task masked-mean losses ``[T]``, one ``vmap`` per task group.

    Samples with a mask not in {0, 1} or an invalid label are masked out (module docstring);
    ``invalid_labels`` counts them."""
    self.check_batch(batch)
    per_group = []
    for group in self.groups:
      preds, labels, masks = self._stack_group(group, predictions, batch)
      loss_fn = group.prototype.loss

      def task_loss(p, y, m, loss_fn=loss_fn):
        return losses_lib.masked_mean(loss_fn(p, y), m)

      per_group.append(jax.vmap(task_loss)(preds, labels, masks))
    return jnp.concatenate(per_group)[self._from_group_order]

  def invalid_labels(self, batch: Mapping) -> jax.Array:
    """Per task ``[T]`` int32: the samples that ``losses`` and ``metric_sums`` mask out for a
    mask not exactly 0 or 1 (0.3, 2, NaN) or an invalid labelled label (-1, 2.7 or K for
    multiclass, outside [0, 1] for binary and multilabel, NaN or inf).  Jittable; one
    vectorised pass per task group, nothing read on the host."""
    self.check_batch(batch)
    counts = [jnp.sum(self._group_labels(g, batch)[2], axis=1, dtype=jnp.int32)
              for g in self.groups]
    return jnp.concatenate(counts)[self._from_group_order]

  @staticmethod
  def nonfinite_inputs(batch: Mapping) -> jax.Array:
    """int32 scalar: the samples with a NaN or inf in any float input leaf.  Jittable.

    They are not masked out (their predictions are not finite, so the step rejects the
    update); this count says why."""
    bad = None
    for leaf in jax.tree_util.tree_leaves(batch['inputs']):
      leaf = jnp.asarray(leaf)
      if jnp.issubdtype(leaf.dtype, jnp.inexact):
        row = ~jnp.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
        bad = row if bad is None else bad | row
    return jnp.int32(0) if bad is None else jnp.sum(bad, dtype=jnp.int32)

  def metric_sums(self, predictions: Mapping, batch: Mapping) -> dict:
    """Accumulable metric statistics ``{metric_key: [T_g] sums}`` per group, plus counts.

    Returns a tuple over groups of dicts ``{'count': [Tg], metric.name: [Tg]}`` holding the
    masked per-sample sums; ``finalize_metrics`` turns accumulated sums into values.  Samples
    masked out as invalid (module docstring) are not counted.
    """
    self.check_batch(batch)
    out = []
    for group in self.groups:
      preds, labels, masks = self._stack_group(group, predictions, batch)
      stats = {'count': jnp.sum(masks, axis=1).astype(jnp.float32)}

      def sums(p, y, m, fn):
        return jnp.sum(jnp.where(m, fn(p, y), 0.0))

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

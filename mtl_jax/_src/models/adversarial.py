"""Adversarial shared-private MTL (ASP-MTL; Liu, Qiu & Huang, "Adversarial Multi-task Learning
for Text Classification", ACL 2017).

One input per task: inputs [B, T, ...], task t's examples at [:, t].  For task t's input x_t:

    s_t = E_s(x_t)        (shared encoder, a backbone copy run on all B*T inputs at once)
    p_t = E_t(x_t)        (private encoders: T backbone copies stacked and vmapped)
    y_t = head_t([s_t; p_t])                          (fusion='concat')
    y_t = head_t([p_t; Attn_t(q=p_t, kv={s_t, p_t})])  (fusion='attention': task t's own
                                                        attention picks from its shared and
                                                        private features)

Auxiliary losses (sown as ``aux_loss``; the train step adds them with weight 1):

* adversarial: ``adv_weight`` * CE(D(R_kappa(s)), task index), mean over the B*T examples;
  D = MLP(``disc_hidden``) -> Dense(T) logits.  The gradient-reversal layer R_kappa makes D
  descend the cross-entropy while E_s ascends kappa times it (E_s learns task-invariant
  features).  kappa = ``reversal`` ('constant') or ``reversal`` * (2 / (1 + exp(-10 p)) - 1)
  ('dann') with p = step / ``schedule_steps`` clipped to [0, 1], where step counts the earlier
  training calls: the model's non-parameter variable ``progress/step`` (in the train state's
  ``model_state`` and checkpoints), advanced by every train-mode call whose ``progress``
  collection is mutable (the train step's is), never in evaluation.
* orthogonality: ``diff_weight`` * sum_t ||S_t^T H_t||_F^2 with S_t [B, d_s], H_t [B, d_p]
  the shared / private features of task t's examples ('frobenius'; it grows with B^2 and the
  feature scale); 'dsn' (Domain Separation Networks): centre each feature over the batch,
  L2-normalise rows, sum_t mean((H_t^T S_t)^2) (scale-free).

Both are added outside the task weighting: gradient methods never see them (the discriminator
is not a task), and the reversed gradient reaches E_s directly.

Shared/task split: 'shared' = the shared encoder and the discriminator (trained through every
task's examples); 'task' = the private encoders and the heads.  No representation split (the
model sows auxiliary losses).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check, check_widths
from mtl_jax._src.models.gradient_reversal import dann_schedule, reverse_gradient
from mtl_jax._src.models.heads import TaskHeads
from mtl_jax._src.models.mlp import MLP
from mtl_jax._src.models.stacked import Stacked

SCHEDULES = ('constant', 'dann')
FUSIONS = ('concat', 'attention')
DIFFS = ('frobenius', 'dsn')
PROGRESS = 'progress'


def _flat(h):
  return jnp.reshape(h, (h.shape[0], -1))


def orthogonality(shared, private, kind: str = 'frobenius', eps: float = 1e-6):
  """sum_t ||S_t^T H_t||_F^2 ('frobenius') or the DSN variant (centred, row-normalised,
  mean of squared entries, summed over tasks).  shared [T, B, d_s], private [T, B, d_p]."""
  if kind == 'dsn':
    def prepare(a):
      a = a - jnp.mean(a, axis=1, keepdims=True)
      return a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + eps)
    shared, private = prepare(shared), prepare(private)
  cross = jnp.einsum('tbi,tbj->tij', shared, private)
  if kind == 'dsn':
    return jnp.sum(jnp.mean(jnp.square(cross), axis=(1, 2)))
  return jnp.sum(jnp.square(cross))


class Discriminator(nn.Module):
  """MLP(hidden) -> Dense(num_tasks): task logits."""
  hidden: tuple
  num_tasks: int

  @nn.compact
  def __call__(self, s):
    return nn.Dense(self.num_tasks, name='out')(MLP(self.hidden, name='mlp')(s))


class SharedPart(nn.Module):
  """The shared encoder E_s on all B*T inputs and the discriminator on R_kappa(s)."""
  encoder: nn.Module
  disc_hidden: tuple
  num_tasks: int

  @nn.compact
  def __call__(self, x_flat, kappa, train: bool = False):
    s = _flat(self.encoder(x_flat, train=train))
    logits = Discriminator(self.disc_hidden, self.num_tasks, name='discriminator')(
        reverse_gradient(s, kappa))
    return s, logits


class FeatureAttention(nn.Module):
  """[p; MHA(query p, keys/values {s, p})] for one task: tokens [B, 2, d] = (s, p)."""
  num_heads: int = 1

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    attended = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(tokens[:, 1:], tokens)
    return jnp.concatenate([tokens[:, 1], attended[:, 0]], axis=-1)


class PrivatePart(nn.Module):
  """The private encoders (one backbone copy per task, copy t reading input t) and the
  heads on [s_t; p_t] (or on task t's attention over them)."""
  encoder: nn.Module
  heads: TaskHeads
  num_tasks: int
  fusion: str = 'concat'
  fusion_heads: int = 1

  @nn.compact
  def __call__(self, x_tasks, s, train: bool = False):
    p = Stacked(self.encoder, self.num_tasks, in_axis=0, name='private')(x_tasks, train=train)
    p = jnp.reshape(p, p.shape[:2] + (-1,))                             # [T, B, d_p]
    if self.fusion == 'attention':
      if s.shape[-1] != p.shape[-1]:
        raise ValueError(f"adversarial.fusion: 'attention' needs shared and private features "
                         f'of one width, got {s.shape[-1]} and {p.shape[-1]}')
      tokens = jnp.stack([s, p], axis=2)                                # [T, B, 2, d]
      fused = Stacked(FeatureAttention(self.fusion_heads, name='attention'), self.num_tasks,
                      in_axis=0)(tokens, train=train)
    else:
      fused = jnp.concatenate([s, p], axis=-1)
    return self.heads(fused, train, stacked=True), p


class AdversarialSharedPrivate(nn.Module):
  """``shared``: encoder + discriminator; ``task``: private encoders + heads."""
  shared: SharedPart
  task: PrivatePart
  adv_weight: float = 0.05
  diff_weight: float = 0.01
  diff: str = 'frobenius'
  reversal: float = 1.0
  reversal_schedule: str = 'constant'
  schedule_steps: int = 1000

  def kappa(self, step):
    """The reversal strength after ``step`` training steps."""
    if self.reversal_schedule == 'dann':
      return dann_schedule(step / self.schedule_steps, self.reversal)
    return jnp.asarray(self.reversal, jnp.float32)

  @nn.compact
  def __call__(self, x, train: bool = False):
    num = self.shared.num_tasks
    if x.ndim < 3 or x.shape[1] != num:
      raise ValueError(f'adversarial.per_task_inputs: inputs must be [B, T={num}, ...] '
                       f'(task t at [:, t]), got shape {tuple(x.shape)}')
    step = self.variable(PROGRESS, 'step', lambda: jnp.zeros((), jnp.int32))
    kappa = self.kappa(step.value)
    if train and self.is_mutable_collection(PROGRESS) and not self.is_initializing():
      step.value = step.value + 1
    batch = x.shape[0]
    s, logits = self.shared(jnp.reshape(x, (batch * num,) + x.shape[2:]), kappa, train)
    s_tasks = jnp.swapaxes(jnp.reshape(s, (batch, num, -1)), 0, 1)     # [T, B, d_s]
    predictions, p = self.task(jnp.swapaxes(x, 0, 1), s_tasks, train)
    if train:
      labels = jnp.tile(jnp.arange(num), batch)                        # example b*T + t: t
      ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))
      self.sow('aux_loss', 'adversarial', self.adv_weight * ce)
      self.sow('aux_loss', 'orthogonality',
               self.diff_weight * orthogonality(s_tasks, p, self.diff))
    return predictions


@registry.MODELS.register('adversarial')
def adversarial(tasks, backbone, tower_hidden=(), dropout=0.0, per_task_inputs=False,
                disc_hidden=(32,), adv_weight=0.05, diff_weight=0.01, diff='dsn',
                reversal=1.0, reversal_schedule='constant', schedule_steps=1000,
                fusion='concat', fusion_heads=1):
  """ASP-MTL with a task discriminator behind gradient reversal; see the module docstring."""
  if per_task_inputs is not True:
    raise ValueError('adversarial.per_task_inputs: the task discriminator needs one input per '
                     'task (data with per-task inputs), got a shared input')
  check(len(tasks) >= 2, 'adversarial.num_tasks',
        'the task discriminator needs at least 2 tasks', len(tasks))
  disc_hidden = check_widths('adversarial.disc_hidden', disc_hidden)
  for field, value in (('adv_weight', adv_weight), ('diff_weight', diff_weight),
                       ('reversal', reversal)):
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
          f'adversarial.{field}', 'must be a number >= 0', value)
  check(diff in DIFFS, 'adversarial.diff', f'must be one of {DIFFS}', diff)
  check(fusion in FUSIONS, 'adversarial.fusion', f'must be one of {FUSIONS}', fusion)
  check(type(fusion_heads) is int and fusion_heads >= 1, 'adversarial.fusion_heads',
        'must be an integer >= 1', fusion_heads)
  check(reversal_schedule in SCHEDULES, 'adversarial.reversal_schedule',
        f'must be one of {SCHEDULES}', reversal_schedule)
  check(type(schedule_steps) is int and schedule_steps >= 1, 'adversarial.schedule_steps',
        'must be an integer >= 1', schedule_steps)
  num = len(tasks)
  return AdversarialSharedPrivate(
      shared=SharedPart(backbone, disc_hidden, num),
      task=PrivatePart(backbone.clone(), TaskHeads(tasks, tuple(tower_hidden), dropout), num,
                       fusion, fusion_heads),
      adv_weight=float(adv_weight), diff_weight=float(diff_weight), diff=diff,
      reversal=float(reversal), reversal_schedule=reversal_schedule,
      schedule_steps=schedule_steps)

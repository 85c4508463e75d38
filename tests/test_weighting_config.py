"""``config.weighting`` reaches the method: a wrapper's base options from the base's block,
scalar-or-per-task options, the transforms in their documented order; and every bad value
is a ``ConfigError`` naming the field before anything compiles."""

import jax
import numpy as np
import pytest

from mtl_jax import train, weighting
from mtl_jax._src.config_validation import ConfigError
from mtl_jax._src.weighting import transforms
from tests.conftest import tiny_config

KEY = jax.random.PRNGKey(0)


def _method(tmp_path, **overrides):
  return train.build(tiny_config(**overrides), str(tmp_path)).method


def _outputs(method, num_tasks=2, steps=3, seed=0):
  """Directions of ``combine`` over a few steps on a two-leaf Jacobian."""
  rng = np.random.default_rng(seed)
  row = {'a': np.zeros(3, np.float32), 'b': np.zeros((2, 2), np.float32)}
  state = method.init(num_tasks, row) if method.state_like_params else method.init(num_tasks)
  out = []
  for _ in range(steps):
    jac = {'a': rng.normal(size=(num_tasks, 3)).astype(np.float32),
           'b': rng.normal(size=(num_tasks, 2, 2)).astype(np.float32)}
    losses = rng.uniform(0.5, 2.0, num_tasks).astype(np.float32)
    res = weighting.combine(method, jac, losses, state=state, key=KEY)
    state = res.state
    out.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(res.direction)]))
  return np.array(out)


def test_a_wrapper_takes_its_base_options_from_the_base_block(tmp_path):
  built = _method(tmp_path, **{'weighting.name': 'cr_mogm', 'weighting.cr_mogm.base': 'gradvac',
                               'weighting.gradvac.beta': 0.05})
  expected = weighting.get('cr_mogm', base='gradvac', base_hparams={'beta': 0.05})
  default = weighting.get('cr_mogm', base='gradvac')
  np.testing.assert_allclose(_outputs(built), _outputs(expected), rtol=1e-6)
  assert np.max(np.abs(_outputs(built) - _outputs(default))) > 1e-4   # beta made a difference


def test_scalar_or_per_task_options(tmp_path):
  """graddrop's leak: the block holds (0.0,), one value for every task; a 2-tuple is per
  task (T = 2 in the tiny config)."""
  assert tiny_config().weighting.graddrop.leak == (0.0,)
  one = _method(tmp_path / 'one', **{'weighting.name': 'graddrop',
                                     'weighting.graddrop.leak': (0.3,)})
  per = _method(tmp_path / 'per', **{'weighting.name': 'graddrop',
                                     'weighting.graddrop.leak': (0.3, 0.3)})
  np.testing.assert_allclose(_outputs(one), _outputs(weighting.get('graddrop', leak=0.3)))
  np.testing.assert_allclose(_outputs(per), _outputs(weighting.get('graddrop', leak=0.3)))


def test_transforms_compose_in_the_documented_order(tmp_path):
  built = _method(tmp_path, **{'weighting.name': 'mgda', 'weighting.normalize': 'l2',
                               'weighting.log_losses': True, 'weighting.ema': 0.5,
                               'weighting.groups': 'leaf'})
  manual = transforms.grouped(transforms.ema(transforms.log_losses(
      transforms.normalize(weighting.get('mgda'), 'l2')), 0.5), 'leaf')
  plain = weighting.get('mgda')
  np.testing.assert_allclose(_outputs(built), _outputs(manual), rtol=1e-5, atol=1e-7)
  assert np.max(np.abs(_outputs(built) - _outputs(plain))) > 1e-3


@pytest.mark.parametrize('overrides,message', [
    ({'weighting.name': 'cr_mogm', 'weighting.cr_mogm.base': 'nope'},
     r"config.weighting.cr_mogm: .*'nope'"),
    ({'weighting.name': 'cr_mogm', 'weighting.cr_mogm.base': 'cr_mogm'},
     r"config.weighting.cr_mogm: cr_mogm: base 'cr_mogm' is this wrapper itself"),
    ({'weighting.name': 'trimmed_mean', 'weighting.trimmed_mean.trim_number': 1},
     r'config.weighting.trimmed_mean: .*trim_number'),
    ({'weighting.name': 'krum', 'data.synthetic.num_tasks': 3,
      'weighting.krum.n_byzantine': 1, 'data.synthetic.sizes': (192, 64, 64)},
     r'config.weighting.krum: krum: needs at least n_byzantine \+ 3 = 4 tasks, got 3'),
    ({'weighting.name': 'krum'}, r'config.weighting.krum: .*3 tasks, got 2'),
    ({'weighting.name': 'graddrop', 'weighting.graddrop.leak': (0.1, 0.2, 0.3)},
     r'config.weighting.graddrop: graddrop: 3 leak values given for 2 tasks'),
    ({'weighting.name': 'pcd', 'weighting.pcd.tau': (0.1, 0.2)},
     r'config.weighting.pcd: pcd: 2 tau values given for 1 secondary tasks'),
    ({'weighting.name': 'con_fig', 'weighting.con_fig.pref_vector': (1.0, 2.0, 3.0)},
     r'config.weighting.con_fig: con_fig: pref_vector has 3 values for 2 tasks'),
    ({'weighting.name': 'modo', 'train.batch_size': 31}, r'config.train.batch_size: .*modo'),
    ({'weighting.name': 'modo', 'weighting.mode': 'rep', 'train.batch_size': 30},
     r"config.weighting.mode: weighting 'modo' reads the gradients of 3 sub-batches"),
    ({'weighting.name': 'forum', 'train.task_sampling': 1},
     r"config.train.task_sampling: weighting 'forum' keeps per-task state"),
    ({'weighting.name': 'auto_lambda', 'weighting.normalize': 'l2'},
     r'config.weighting.normalize'),
    ({'weighting.name': 'stch', 'weighting.groups': 'leaf'}, r'config.weighting.groups'),
    ({'weighting.name': 'mgda', 'weighting.normalize': 'l3'}, r'config.weighting.normalize'),
    ({'weighting.name': 'mgda', 'weighting.groups': 'nomatch'}, r'config.weighting.groups'),
    ({'weighting.name': 'gradvac', 'weighting.gradvac.beta': 2.0},
     r'config.weighting.gradvac: .*beta'),
])
def test_bad_weighting_config_names_the_field(overrides, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())

"""The QM9 MPNN backbone on padded graphs: invariances and batching, by construction.

Each test builds graphs by hand (random features on complete graphs, as the QM9 transform
makes them) and checks a property that any correct implementation has: the readout does not
depend on the order of the nodes, nor on how much padding follows them, and a batch gives each
graph what it gives alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models


def _graph(n, rng, node_budget, edge_budget, features=11, edge_features=5):
  """One complete graph of n nodes, padded to the budgets: the backbone's input dict."""
  pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
  nodes = np.zeros((node_budget, features), np.float32)
  nodes[:n] = rng.normal(size=(n, features))
  edges = np.zeros((edge_budget, edge_features), np.float32)
  edges[:len(pairs)] = rng.normal(size=(len(pairs), edge_features))
  senders = np.zeros(edge_budget, np.int32)
  receivers = np.zeros(edge_budget, np.int32)
  senders[:len(pairs)] = [i for i, _ in pairs]
  receivers[:len(pairs)] = [j for _, j in pairs]
  return {'nodes': nodes, 'node_mask': np.arange(node_budget) < n, 'edges': edges,
          'senders': senders, 'receivers': receivers,
          'edge_mask': np.arange(edge_budget) < len(pairs)}


def _batch(graphs):
  return {k: np.stack([g[k] for g in graphs]) for k in graphs[0]}


@pytest.fixture(scope='module')
def net():
  backbone = models.get_backbone('mpnn', dim=8, edge_hidden=16)
  rng = np.random.default_rng(0)
  sample = _batch([_graph(4, rng, 6, 30)])
  params = backbone.init(jax.random.PRNGKey(0), sample)
  return jax.jit(lambda p, x: backbone.apply(p, x)), params


def test_node_order_does_not_matter(net):
  apply, params = net
  g = _graph(5, np.random.default_rng(1), 7, 20)
  perm = np.array([3, 0, 4, 1, 2])                        # new position of each old node
  h = dict(g)
  h['nodes'] = g['nodes'].copy()
  h['nodes'][perm] = g['nodes'][:5]
  h['senders'] = np.where(g['edge_mask'], perm[np.minimum(g['senders'], 4)], 0)
  h['receivers'] = np.where(g['edge_mask'], perm[np.minimum(g['receivers'], 4)], 0)
  rows = np.random.default_rng(2).permutation(20)         # and the edges in another order
  for k in ('edges', 'senders', 'receivers', 'edge_mask'):
    h[k] = h[k][rows]
  a, b = apply(params, _batch([g])), apply(params, _batch([h]))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_padding_changes_nothing(net):
  apply, params = net
  rng = np.random.default_rng(3)
  small = _graph(4, rng, 4, 12)
  big = _graph(4, np.random.default_rng(3), 9, 40)       # the same graph, more padding
  big['nodes'][4:] = 7.0                                  # garbage in the padding
  big['edges'][12:] = -3.0
  np.testing.assert_array_equal(big['nodes'][:4], small['nodes'])
  np.testing.assert_allclose(apply(params, _batch([small])), apply(params, _batch([big])),
                             rtol=1e-5, atol=1e-6)


def test_a_batch_gives_each_graph_what_it_gives_alone(net):
  apply, params = net
  rng = np.random.default_rng(4)
  graphs = [_graph(n, rng, 6, 30) for n in (2, 6, 3, 1)]
  together = apply(params, _batch(graphs))
  for k, g in enumerate(graphs):
    np.testing.assert_allclose(together[k], apply(params, _batch([g]))[0], rtol=1e-5,
                               atol=1e-6)
  assert np.all(np.isfinite(together))


def test_bad_inputs_and_options():
  backbone = models.get_backbone('mpnn', dim=4)
  with pytest.raises(ValueError, match=r"mpnn: inputs must be a dict with keys"):
    backbone.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r'mpnn.dim: must be a positive integer'):
    models.get_backbone('mpnn', dim=0)


def test_edge_conv_equals_per_edge_weight_matrices():
  """The reassociated contraction equals NNConv as PyTorch Geometric writes it, in NumPy: a
  [d, d] matrix Theta(e) per edge, h_j Theta(e_ji) averaged over the edges into i."""
  from mtl_jax._src.models import mpnn          # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  d, hidden, size = 3, 4, 5
  g = _graph(4, rng, size, 16, edge_features=2)
  g['edge_mask'][[1, 7]] = False                          # not complete: two edges missing
  batch = {k: v[None] for k, v in _batch([g]).items()}
  grid = lambda v: mpnn.pair_grid(jnp.asarray(v), batch['senders'][0], batch['receivers'][0],
                                  jnp.asarray(batch['edge_mask'][0], jnp.float32), size)
  h = rng.normal(size=(1, size, d)).astype(np.float32)
  conv = mpnn.EdgeConv(d, hidden)
  args = (h, grid(batch['edges'][0]), grid(batch['edge_mask'][0].astype(np.float32)))
  params = conv.init(jax.random.PRNGKey(1), *args)
  got = conv.apply(params, *args)[0]
  p = jax.tree.map(np.asarray, params['params'])
  want = h[0] @ p['root']['kernel'] + p['root']['bias']
  total, count = np.zeros((size, d)), np.zeros(size)
  for e in np.flatnonzero(g['edge_mask']):
    a = np.maximum(g['edges'][e] @ p['edge_in']['kernel'] + p['edge_in']['bias'], 0)
    theta = (a @ p['edge_out']['kernel'] + p['edge_out']['bias']).reshape(d, d)
    total[g['receivers'][e]] += h[0, g['senders'][e]] @ theta
    count[g['receivers'][e]] += 1
  want = want + total / np.maximum(count, 1)[:, None]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', [n for n in models.names() if n != 'adversarial'])
def test_every_model_runs_over_graphs_batch_independently(name):
  """Every architecture of the zoo over the graph backbone (the adversarial one needs one
  input per task): each graph's prediction is finite and does not depend on the others in its batch."""
  from mtl_jax._src import tasks as tasks_lib     # pylint: disable=import-outside-toplevel
  tasks = tasks_lib.TaskSet([tasks_lib.regression(f't{k}') for k in range(3)])
  model = models.get(name, tasks, models.get_backbone('mpnn', dim=4, edge_hidden=4, steps=2,
                                                      set2set_steps=1))
  rng = np.random.default_rng(6)
  graphs = [_graph(n, rng, 5, 20) for n in (3, 5, 2)]
  variables = jax.jit(model.init)({'params': jax.random.PRNGKey(0)}, _batch(graphs))
  apply = jax.jit(model.apply)
  together = apply(variables, _batch(graphs))
  rolled = apply(variables, _batch(graphs[1:] + graphs[:1]))    # other neighbours, same shape
  assert set(together) == set(tasks.names)
  for t in tasks.names:
    assert together[t].shape == (3, 1) and np.all(np.isfinite(together[t]))
    np.testing.assert_allclose(np.roll(together[t], -1, axis=0), rolled[t], rtol=1e-5,
                               atol=1e-6)

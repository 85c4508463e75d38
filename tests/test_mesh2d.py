"""A 2-D ('data', 'model') mesh of 8 CPU devices: FSDP, task parallelism and both give the
1-device step's parameters and losses (to 1e-5), with the state really split over 'model';
the whole experiment (checkpoints restored into the split layout) runs on it; bad mesh
configs fail naming the field.  Everything runs in one subprocess (8 devices must be set
before JAX starts), whose findings the tests below read."""

import json
import textwrap

import pytest

from tests.conftest import run_python

WORKER = textwrap.dedent('''
    import jax
    jax.config.update('jax_num_cpu_devices', 8)  # before any other JAX call
    import json, sys, tempfile, time
    import numpy as np
    import optax
    from mtl_jax import init_train_state, make_train_step, models, parallel, train, weighting
    from mtl_jax.data import BatchIterator, make_synthetic
    from tests.conftest import tiny_config

    start = time.time()
    assert len(jax.devices()) == 8, jax.devices()
    ds = make_synthetic(4, 0.5, input_dim=12, sizes=(256, 8, 8))
    model = models.get('shared_bottom', ds.tasks, models.get_backbone('mlp', hidden=(16,)),
                       tower_hidden=(8,))
    iterator = BatchIterator(ds.split('train'), 16, seed=0)
    batches = [next(iterator) for _ in range(3)]
    optimizer = optax.adam(1e-2)
    SHARED = "['shared']['Dense_0']['kernel']"
    HEAD = "['task']['group0']['towers']['out']['kernel']"
    LAYOUTS = {'fsdp': (4, 2), 'tasks': (2, 4), 'fsdp+tasks': (2, 4)}

    def shard_shapes(tree):
        """{path: (global shape, the first addressable shard's shape)}"""
        return {jax.tree_util.keystr(p): (list(x.shape), list(x.addressable_shards[0].data.shape))
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    def run(method, layout=None):
        state = init_train_state(model, ds.tasks, optimizer, method, batches[0]['inputs'],
                                 jax.random.PRNGKey(0))
        put, sharding, out = (lambda b: b), None, {}
        if layout is not None:
            mesh = parallel.make_mesh(shape=LAYOUTS[layout])
            sharding = parallel.state_sharding(state, mesh, layout, task_sizes=(4,))
            state = jax.device_put(state, sharding.state)
            put = lambda b: parallel.shard_batch(b, mesh)
        step = make_train_step(model, ds.tasks, optimizer, method, sharding=sharding)
        compiled = step.lower(state, put(batches[0])).compile()
        if layout is not None:   # each device's Jacobian rows of the trunk's kernel [T, 12, 16]
            text = compiled.as_text()
            out['rows_split'] = 'f32[1,12,16]' in text and 'f32[4,12,16]' not in text
        losses = []
        for b in batches:
            state, metrics = compiled(state, put(b))
            losses.append(np.asarray(metrics['losses']))
        out['params'] = jax.tree.map(np.asarray, state.params)
        out['losses'] = np.stack(losses)
        if layout is not None:
            out['shards'] = shard_shapes(state.params)
            out['mu_shards'] = shard_shapes(state.opt_state[0].mu)
        return out

    report = {'cases': {}}
    for name in ('ew', 'upgrad', 'pcgrad'):
        method = weighting.get(name)
        one = run(method)
        for layout in LAYOUTS:
            got = run(method, layout)
            diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one['params'],
                                got['params'])
            report['cases'][f'{layout}/{name}'] = {
                'param_diff': max(jax.tree.leaves(diff)),
                'loss_diff': float(np.max(np.abs(one['losses'] - got['losses']))),
                'shared': got['shards'][SHARED], 'head': got['shards'][HEAD],
                'mu_shared': got['mu_shards'][SHARED], 'mu_head': got['mu_shards'][HEAD],
                'rows_split': got['rows_split']}
    report['steps_s'] = time.time() - start

    # The whole experiment on a (4, 2) mesh: MMoE (experts and heads on their stacked axes,
    # the rest FSDP), checkpointed at step 2, resumed to step 4, restored split again.
    experiment = lambda steps, **kw: tiny_config(**{
        'train.mesh_shape': (4, 2), 'train.shard': 'fsdp+tasks', 'model.name': 'mmoe',
        'model.mmoe.num_experts': 2, 'weighting.name': 'pcgrad', 'train.steps': steps,
        'train.checkpoint_every': 2, 'train.log_every': 2, **kw})
    workdir = tempfile.mkdtemp()
    first = train.train_and_evaluate(experiment(2), workdir)
    second = train.train_and_evaluate(experiment(4), workdir)
    run_ = train.build(experiment(4), workdir)
    restored, at = train.init_or_restore(run_)
    run_.checkpointer.close()
    report['experiment'] = {
        'devices': len(second['devices']), 'steps': [first['steps'], second['steps']],
        'resumed_from': second['resumed_from_step'], 'restored_at': at,
        'traces': second['train_step_traces'],
        'finite': bool(np.all(np.isfinite([v for m in second['metrics'].values()
                                           for v in m.values()]))),
        'shards': shard_shapes(restored.params),
        'mu_shards': shard_shapes(restored.opt_state[0].mu)}

    # Bad inputs: each a ConfigError naming its field.
    bad = {'mesh_shape': {'train.mesh_shape': (3, 2)},
           'mesh_shape_form': {'train.mesh_shape': (2,)},
           'batch_size': {'train.mesh_shape': (4, 2), 'train.batch_size': 30},
           'shard_without_mesh': {'train.shard': 'fsdp'},
           'tasks': {'train.mesh_shape': (2, 4), 'train.shard': 'tasks'},
           'experts': {'train.mesh_shape': (4, 2), 'train.shard': 'tasks',
                       'model.name': 'mmoe', 'model.mmoe.num_experts': 3}}
    report['errors'] = {}
    for case, overrides in bad.items():
        try:
            train.build(tiny_config(**overrides), tempfile.mkdtemp())
            report['errors'][case] = None
        except train.ConfigError as e:
            report['errors'][case] = str(e)
    report['total_s'] = time.time() - start
    print(json.dumps(report))
''')


@pytest.fixture(scope='module')
def report():
  proc = run_python(['-c', WORKER])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('layout', ['fsdp', 'tasks', 'fsdp+tasks'])
@pytest.mark.parametrize('method', ['ew', 'upgrad', 'pcgrad'])
def test_sharded_step_equals_one_device_step(report, layout, method):
  case = report['cases'][f'{layout}/{method}']
  assert case['param_diff'] <= 1e-5 and case['loss_diff'] <= 1e-5, case


@pytest.mark.parametrize('method', ['ew', 'upgrad', 'pcgrad'])
def test_layouts_really_split_params_and_optimizer_state(report, method):
  # [global shape, shard shape]: the trunk kernel [12, 16] (FSDP: its largest axis) and the
  # heads' output kernel [4, 8, 1] (tasks: the task axis), on model axes of 2 and 4.
  unsplit = lambda s: [s, s]
  expected = {'fsdp': ([[12, 16], [12, 8]], unsplit([4, 8, 1])),
              'tasks': (unsplit([12, 16]), [[4, 8, 1], [1, 8, 1]]),
              'fsdp+tasks': ([[12, 16], [12, 4]], [[4, 8, 1], [1, 8, 1]])}
  for layout, (shared, head) in expected.items():
    case = report['cases'][f'{layout}/{method}']
    assert [case['shared'], case['head']] == [shared, head], (layout, case)
    assert [case['mu_shared'], case['mu_head']] == [shared, head], (layout, case)


def test_task_layouts_split_the_jacobian_rows(report):
  # pcgrad reads J: with the task axis over 'model' (size 4) each device computes one row
  # of the trunk kernel's Jacobian [4, 12, 16]; under FSDP alone it is split otherwise.
  assert report['cases']['tasks/pcgrad']['rows_split']
  assert report['cases']['fsdp+tasks/pcgrad']['rows_split']
  assert not report['cases']['fsdp/pcgrad']['rows_split']


def test_experiment_on_the_2d_mesh_checkpoints_and_resumes_split(report):
  e = report['experiment']
  assert e['devices'] == 8 and e['steps'] == [2, 4] and e['finite'], e
  assert e['resumed_from'] == 2 and e['restored_at'] == 4 and e['traces'] == 1, e
  # MMoE with 2 experts and 2 tasks on a model axis of 2: experts [2, 16, 16] and the
  # per-task gates and heads split on their leading axis, in params and Adam's moments.
  for shards in (e['shards'], e['mu_shards']):
    experts = shards["['shared']['experts']['module']['Dense_0']['kernel']"]
    gates = shards["['task']['gate']['module']['logits']['kernel']"]
    heads = shards["['task']['heads']['group0']['towers']['out']['kernel']"]
    for global_shape, shard in (experts, gates, heads):
      assert shard == [global_shape[0] // 2] + global_shape[1:], shards


def test_bad_mesh_configs_name_the_field(report):
  errors = report['errors']
  assert errors['mesh_shape'].startswith('config.train.mesh_shape: (3, 2) does not divide '
                                         'the 8 devices'), errors
  assert errors['mesh_shape_form'].startswith('config.train.mesh_shape: must be'), errors
  assert errors['batch_size'].startswith(
      "config.train.batch_size: must be divisible by the 4 devices of the mesh's 'data' "
      'axis'), errors
  assert errors['shard_without_mesh'].startswith('config.train.shard:'), errors
  assert 'mesh_shape' in errors['shard_without_mesh'], errors
  assert errors['tasks'].startswith('config.train.shard:'), errors
  assert 'the 2 tasks are not divisible by 4' in errors['tasks'], errors
  assert errors['experts'].startswith('config.model.mmoe.num_experts:'), errors
  assert errors['experts'].endswith('got 3'), errors

"""Command line of the sweep runner (``mtl_jax._src.sweep``): methods x seeds and baselines.

    python -m mtl_jax.sweep --config=mtl_jax/configs/qm9.py:sweep \\
        --methods=ew,uw,mgda,pcgrad,cagrad,nash_mtl,famo,fairgrad --seeds=3 --workdir=DIR

Each method (and, unless ``--baselines=false``, each task alone) trains for the seeds
``config.seed .. config.seed + seeds - 1``, a method's seeds as one vmapped program where the
run allows (``--vmap=false``: one after another).  ``--sequential_check=ew`` also runs that
method's seeds one after another and reports the speed-up.  Running the same command again
resumes the sweep.  ``DIR/sweep.json`` and ``DIR/sweep.md`` hold the results: per-task
metrics (mean ± std over seeds), Delta-m% against the baselines and mean rank.  Any config key
can be overridden as in ``mtl_jax.main`` (``--config.train.steps=100``).  Exit status 2 on a
usage or configuration error, 1 when a run stops.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from mtl_jax._src import cli
from mtl_jax._src import sweep
from mtl_jax._src.config_validation import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file with get_config().',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory of the sweep (resumed if it holds one).')
flags.DEFINE_list('methods', None, 'Weighting methods, comma-separated (e.g. ew,mgda).')
flags.DEFINE_string('seeds', '3', 'Number of seeds per method and baseline.')
flags.DEFINE_bool('baselines', True, 'Also train every task alone (for Delta-m%).')
flags.DEFINE_bool('vmap', True, "Run a unit's seeds as one vmapped program where possible.")
flags.DEFINE_string('sequential_check', None,
                    'A method whose seeds are also run one after another (the speed-up).')
flags.DEFINE_bool('debug', False, 'Show tracebacks of usage and configuration errors.')


def parse_flags(argv):
  return cli.parse_flags(FLAGS, argv, ('config', 'workdir', 'methods'),
                         'python -m mtl_jax.sweep --config=mtl_jax/configs/tiny.py '
                         '--methods=ew,mgda --seeds=3 --workdir=runs/sweep')


def _seeds(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise ConfigError(f'--seeds: must be an integer >= 1 (the number of seeds), got '
                      f'{text!r}') from None


def main(argv):
  def body():
    config = cli.load_config(FLAGS['config'])
    record = sweep.run_sweep(config, FLAGS.methods, _seeds(FLAGS.seeds), FLAGS.workdir,
                             baselines=FLAGS.baselines, vmap=FLAGS.vmap,
                             sequential_check=FLAGS.sequential_check)
    print(sweep.markdown(record))

  cli.run_main(FLAGS, argv, body)


if __name__ == '__main__':
  sys.exit(app.run(main, flags_parser=parse_flags))

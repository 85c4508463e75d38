"""Command line: ``python -m mtl_jax.main --config=mtl_jax/configs/synthetic.py --workdir=DIR``.

Any config key can be overridden, e.g. ``--config.optim.lr=1e-3``.  Running the same
command again resumes from the latest usable checkpoint in ``DIR``.

Several hosts: the same command on each, one process per host, with
``--config.distributed.coordinator_address=HOST0:PORT --config.distributed.num_processes=N
--config.distributed.process_id=I`` (or a cluster launcher's environment: README, "Several
hosts").  Process 0 prints the run; the others print only errors and warnings (stderr).

Exit status: 0 done; 1 the run stopped (too many rejected updates, a non-finite loss under
``on_nonfinite='raise'``, no usable checkpoint); 2 a usage or configuration error.  Errors are
printed as one or two lines naming the flag or config field; ``--debug`` (or
``--verbosity=1``) shows the traceback instead.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from mtl_jax import train
from mtl_jax._src import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file with get_config().',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_bool('debug', False, 'Show tracebacks of usage and configuration errors.')


def parse_flags(argv):
  return cli.parse_flags(FLAGS, argv, ('config', 'workdir'),
                         'python -m mtl_jax.main --config=mtl_jax/configs/tiny.py '
                         '--workdir=runs/tiny')


def main(argv):
  def run():
    config = cli.load_config(FLAGS['config'])
    cli.join_processes(config)      # several processes: first, before JAX's backend starts
    train.train_and_evaluate(config, FLAGS.workdir)

  cli.run_main(FLAGS, argv, run)


if __name__ == '__main__':
  sys.exit(app.run(main, flags_parser=parse_flags))

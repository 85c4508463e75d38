"""Command line: ``python -m mtl_jax.main --config=mtl_jax/configs/synthetic.py --workdir=DIR``.

Any config key can be overridden, e.g. ``--config.optim.lr=1e-3``.  Running the same
command again resumes from the latest checkpoint in ``DIR``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file with get_config().',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)

"""Command line: ``python -m mtl_jax.main --config=mtl_jax/configs/synthetic.py --workdir=DIR``.

Any config key can be overridden, e.g. ``--config.optim.lr=1e-3``.  Running the same
command again resumes from the latest usable checkpoint in ``DIR``.

Exit status: 0 done; 1 the run stopped (too many rejected updates, a non-finite loss under
``on_nonfinite='raise'``, no usable checkpoint); 2 a usage or configuration error.  Errors are
printed as one or two lines naming the flag or config field; ``--debug`` (or
``--verbosity=1``) shows the traceback instead.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import train
from mtl_jax._src import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file with get_config().',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_bool('debug', False, 'Show tracebacks of usage and configuration errors.')


def parse_flags(argv):
  """absl's flag parsing, with errors (an unknown config key, a bad value) as two lines."""
  try:
    argv = FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if cli.debug_requested(argv):
      raise
    cli.fail(cli.describe_flag_error(e, argv), status=2)
  for name in ('config', 'workdir'):
    if FLAGS[name].value is None and not FLAGS[name].present:
      cli.fail(f'--{name} is required, e.g. python -m mtl_jax.main '
               '--config=mtl_jax/configs/tiny.py --workdir=runs/tiny', status=2)
  return argv


def main(argv):
  debug = FLAGS.debug or FLAGS['verbosity'].value >= 1
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags are --name=value', status=2)
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    config = cli.load_config(FLAGS['config'])
    train.train_and_evaluate(config, FLAGS.workdir)
  except (train.ConfigError, cli.UsageError) as e:
    if debug:
      raise
    cli.fail(str(e), status=2)
  except cli.STOPPED as e:
    if debug:
      raise
    cli.fail(f'{type(e).__name__}: {e}', status=1, hint='')


if __name__ == '__main__':
  sys.exit(app.run(main, flags_parser=parse_flags))

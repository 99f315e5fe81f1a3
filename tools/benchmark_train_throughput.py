r"""Training throughput of RetinaNet-SpineNet-49 at 640: ours vs tf-models-official.

  python tools/benchmark_train_throughput.py [--batch_size=2] [--steps=5]

Both sides train on the same batch with the same settings; see
`official_spinenet.workflows.train_throughput`. Prints images/s for both and the
ratio ours / Model Garden.
"""

import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import tables
from official_spinenet.workflows import train_throughput

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 2, 'Images per step (one device).', lower_bound=1, **fv)
  flags.DEFINE_integer('steps', 5, 'Timed steps per run.', lower_bound=1, **fv)
  flags.DEFINE_integer(
    'repeats', 3, 'Timed runs per side (the median is reported).', lower_bound=1, **fv
  )


def main(argv) -> None:
  """Times both sides; prints a table and the ratio."""
  flag_groups.no_positional_arguments(argv)
  batch = train_throughput.one_batch(FLAGS.batch_size)
  ours = train_throughput.time_ours(batch, FLAGS.steps, FLAGS.repeats)
  theirs = train_throughput.time_model_garden(batch, FLAGS.steps, FLAGS.repeats)
  print(
    f'RetinaNet-SpineNet-49 at {train_throughput.IMAGE_SIZE}, batch {FLAGS.batch_size}, '
    f'{os.cpu_count()} CPUs, median of {FLAGS.repeats} x {FLAGS.steps} steps'
  )
  print(
    tables.format_table(
      ('', 'images/s', 'params'),
      [
        ('ours', ours.images_per_second, f'{ours.params:,}'),
        ('Model Garden', theirs.images_per_second, f'{theirs.params:,}'),
      ],
      digits=2,
    )
  )
  print(f'ratio ours / Model Garden: {theirs.seconds / ours.seconds:.3f}')


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

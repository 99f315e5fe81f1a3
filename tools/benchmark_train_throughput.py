r"""Training throughput of RetinaNet-SpineNet: ours vs tf-models-official, same model.

  python tools/benchmark_train_throughput.py [--configs=640,demo] [--batch_size=2] [--steps=5]
      [--profile_ops]

For each configuration ('640': SpineNet-49 at 640, COCO settings; 'demo': the model
the demo trains, 128 px, batch --demo_batch_size; 'demo_sn49': SpineNet-49 in its
place), both sides train on the same batch in interleaved runs; see
`official_spinenet.workflows.train_throughput`. Prints images/s for both, the ratio
ours / Model Garden, and this machine's matmul GFLOP/s. --profile_ops adds, per
configuration, each side's op time by op kind and the ratio's Amdahl ceiling: theirs
over ours if our non-convolution ops took no time.
"""

import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import tables
from official_spinenet.utils import timing
from official_spinenet.workflows import train_throughput

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_list('configs', ['640', 'demo'], 'Configurations to time.', **fv)
  flags.DEFINE_integer('batch_size', 2, 'Images per step at 640 (one device).', lower_bound=1, **fv)
  flags.DEFINE_integer(
    'demo_batch_size', 16, "Images per step of the demo configurations (the demo's).", **fv
  )
  flags.DEFINE_integer('steps', 5, 'Timed steps per run.', lower_bound=1, **fv)
  flags.DEFINE_bool(
    'profile_ops', False, 'Also profile one run per side: op time by kind, Amdahl ceiling.', **fv
  )
  flags.DEFINE_integer(
    'repeats', 3, 'Timed runs per side, interleaved (the median is reported).', lower_bound=1, **fv
  )


def main(argv) -> None:
  """Times both sides per configuration; prints a table with the ratios."""
  flag_groups.no_positional_arguments(argv)
  unknown = set(FLAGS.configs) - set(train_throughput.CONFIGS)
  if unknown:
    raise app.UsageError(
      f'--configs: unknown {sorted(unknown)}; known {list(train_throughput.CONFIGS)}'
    )
  rows = []
  for name in FLAGS.configs:
    config = train_throughput.CONFIGS[name]
    batch_size = FLAGS.demo_batch_size if config.demo_width else FLAGS.batch_size
    batch = train_throughput.one_batch(batch_size, config)
    result = train_throughput.compare(
      batch, FLAGS.steps, FLAGS.repeats, config, profile=FLAGS.profile_ops
    )
    ours, theirs = result['ours'], result['model_garden']
    ratio = theirs.seconds / ours.seconds
    if FLAGS.profile_ops:
      header = ('op kind', 'ours s', 'Model Garden s', 'ours share')
      rows_ops = train_throughput.op_time_rows(ours, theirs)
      print(tables.format_table(header, rows_ops, digits=3, markdown=True))
      ceiling = train_throughput.ratio_ceiling(ours, theirs)
      print(f'{name}: ratio ceiling with our non-convolution ops at zero time: {ceiling:.2f}')
    rows.append((name, batch_size, ours.images_per_second, theirs.images_per_second, ratio))
    rows.append(('', 'params', f'{ours.params:,}', f'{theirs.params:,}', ''))
    print(
      f'{name}: ours {ours.images_per_second:.2f} images/s, Model Garden '
      f'{theirs.images_per_second:.2f}, ratio {ratio:.3f}',
      flush=True,
    )
  print(
    f'\nRetinaNet-SpineNet training step, float32, {os.cpu_count()} CPUs '
    f'({timing.matmul_gflops():.0f} GFLOP/s float32 matmul), median of {FLAGS.repeats} '
    f'interleaved runs x {FLAGS.steps} steps:'
  )
  header = ('config', 'batch', 'ours images/s', 'Model Garden images/s', 'ours / MG')
  print(tables.format_table(header, rows, digits=3, markdown=True))


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

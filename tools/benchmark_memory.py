r"""Peak resident memory of RetinaNet-SpineNet-49 at 640: ours against Model Garden's.

  python tools/benchmark_memory.py [--train_batch_size=2] [--serve_batch_size=8]
      [--work_dir=/tmp/sb]

Each figure is the peak RSS of a fresh process doing one thing (see
`official_spinenet.workflows.memory_benchmark`): training at 640 for a few steps, and
serving the exported SavedModel (exports in --work_dir from benchmark_serving.py are
reused). Prints both sides, the ratio Model Garden / ours, the RSS of a process that
only imported TensorFlow, and the machine's matmul GFLOP/s.
"""

import os
import sys
import tempfile

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import tables
from official_spinenet.utils import timing
from official_spinenet.workflows import memory_benchmark
from official_spinenet.workflows import serving_benchmark

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('train_batch_size', 2, 'Training batch size.', lower_bound=1, **fv)
  flags.DEFINE_integer('train_steps', 3, 'Training steps after tracing.', lower_bound=1, **fv)
  flags.DEFINE_integer('serve_batch_size', 8, 'Serving batch size.', lower_bound=1, **fv)
  flags.DEFINE_integer('calls', 3, 'Serving calls after one warm-up.', lower_bound=1, **fv)
  flags.DEFINE_string('work_dir', None, 'Checkpoints, exports, images (default: a temp dir).', **fv)


def main(argv) -> None:
  """Runs each child in turn; prints a table with the ratios."""
  flag_groups.no_positional_arguments(argv)
  work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix='memory_benchmark_')
  gflops = timing.matmul_gflops()
  baseline = memory_benchmark.baseline_mb()
  training = memory_benchmark.training_peak_mb(FLAGS.train_batch_size, FLAGS.train_steps)
  export_dirs = serving_benchmark.export_both(work_dir, FLAGS.serve_batch_size)
  images = serving_benchmark.write_jpegs(os.path.join(work_dir, 'images'), FLAGS.serve_batch_size)
  serving = memory_benchmark.serving_peak_mb(export_dirs, images, FLAGS.calls)
  rows = [
    (f'{what}, batch {batch}', ours, theirs, theirs / ours)
    for what, batch, (ours, theirs) in (
      ('training', FLAGS.train_batch_size, (training['ours'], training['model_garden'])),
      ('serving', FLAGS.serve_batch_size, (serving['ours'], serving['model_garden'])),
    )
  ]
  print(
    f'Peak RSS (MiB) at {serving_benchmark.IMAGE_SIZE}, {os.cpu_count()} CPUs, '
    f'matmul {gflops:.0f} GFLOP/s; TensorFlow imported alone: {baseline:.0f} MiB'
  )
  print('command: ' + ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
  header = ('benchmark', 'ours', 'Model Garden', 'Model Garden / ours')
  print(tables.format_table(header, rows, digits=2))


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

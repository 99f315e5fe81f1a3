r"""Serving latency of RetinaNet-SpineNet-49 at 640: our SavedModel against Model Garden's.

  python tools/benchmark_serving.py [--batch_sizes=1,8] [--calls=10] [--work_dir=/tmp/sb]

Both sides get the same random weights and are exported with a static batch size;
each SavedModel is served in its own process on the same 640x480 JPEGs, calls
interleaved (see `official_spinenet.workflows.serving_benchmark`). Prints median and
p95 latency, images/s, peak RSS of each serving process, the ratio Model Garden / ours
and the machine's matmul GFLOP/s. Exports in --work_dir are reused on a second run.
"""

import os
import sys
import tempfile

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import tables
from official_spinenet.utils import timing
from official_spinenet.workflows import serving_benchmark as sb

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flag_groups.define_integer_list(
    'batch_sizes', [1, 8], 'Batch sizes (one export per side each).', lower_bound=1, **fv
  )
  flags.DEFINE_integer('calls', 10, 'Timed calls per side and batch size.', lower_bound=1, **fv)
  flags.DEFINE_integer('warmup', 2, 'Untimed calls per side first.', lower_bound=1, **fv)
  flags.DEFINE_string('work_dir', None, 'Checkpoints, exports, images (default: a temp dir).', **fv)


def _rows(result):
  rows = []
  for side in sb.SIDES:
    stats = result.stats[side]
    rows.append(
      (
        side,
        result.batch_size,
        stats.median_seconds,
        stats.p95_seconds,
        stats.images_per_second,
        result.peak_rss_mb[side],
      )
    )
  return rows


def main(argv) -> None:
  """Exports both sides, times them interleaved; prints a table and the ratios."""
  flag_groups.no_positional_arguments(argv)
  work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix='serving_benchmark_')
  gflops = timing.matmul_gflops()
  rows, notes = [], []
  for batch_size in FLAGS.batch_sizes:
    export_dirs = sb.export_both(work_dir, batch_size)
    images = sb.write_jpegs(os.path.join(work_dir, 'images'), batch_size)
    result = sb.serve_both(export_dirs, images, FLAGS.calls, FLAGS.warmup)
    rows += _rows(result)
    ratio = result.stats['model_garden'].median_seconds / result.stats['ours'].median_seconds
    notes.append(
      f'batch {batch_size}: ratio Model Garden / ours (median) {ratio:.2f}; '
      f'detections {result.detections}'
    )
  print(
    f'RetinaNet-SpineNet-49 at {sb.IMAGE_SIZE}, image_bytes of 640x480 JPEGs, '
    f'{os.cpu_count()} CPUs, matmul {gflops:.0f} GFLOP/s, {FLAGS.calls} calls per side'
  )
  header = ('side', 'batch', 'median s', 'p95 s', 'images/s', 'peak RSS MiB')
  print(tables.format_table(header, rows, digits=3))
  print('\n'.join(notes))
  print('command: ' + ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:]))


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

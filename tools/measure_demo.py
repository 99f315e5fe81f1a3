r"""Times the README's demo from nothing and checks its target (issue 3).

  python tools/measure_demo.py [--output_dir=/tmp/spinenet_demo_measure]

Runs `spinenet-demo` in a fresh process and a fresh output folder (data
generation, training, evaluation: everything after `pip install`), measures the
wall time, reads the held-out COCO metrics the run wrote, and prints them beside
the target: AP50 >= 0.8 within 15 minutes on a 2-core CPU machine. Machines of
this kind differ several-fold in speed, so the machine's float32 matmul GFLOP/s is
printed beside the wall time. Exits 1 if the target is missed.
"""

import os
import shutil
import sys

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import tables
from official_spinenet.utils import timing
from official_spinenet.workflows import demo

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string(
    'output_dir', '/tmp/spinenet_demo_measure', 'Fresh folder for the run (deleted first).', **fv
  )
  flags.DEFINE_float('target_ap50', 0.8, 'AP50 the demo must reach.', **fv)
  flags.DEFINE_float('target_minutes', 15.0, 'Wall time the demo must stay within.', **fv)
  flags.DEFINE_multi_string('gin_param', [], 'Passed through to the demo.', **fv)


def main(argv) -> None:
  """Runs and times the demo; prints the metrics against the targets."""
  flag_groups.no_positional_arguments(argv)
  shutil.rmtree(FLAGS.output_dir, ignore_errors=True)
  result = demo.time_demo_command(FLAGS.output_dir, FLAGS.gin_param)
  minutes = result['minutes']
  if result['returncode']:
    sys.exit(f'The demo failed (exit {result["returncode"]}) after {minutes:.1f} min.')
  metrics = result['metrics']
  ap50_ok = metrics['AP50'] >= FLAGS.target_ap50
  time_ok = minutes <= FLAGS.target_minutes
  gflops = timing.matmul_gflops()
  print(f'demo: {os.cpu_count()} CPUs, float32 matmul {gflops:.0f} GFLOP/s, step {metrics["step"]}')
  print(
    tables.format_table(
      ('', 'value', 'target', ''),
      [
        (
          'wall time (min)',
          f'{minutes:.1f}',
          f'<= {FLAGS.target_minutes:.0f}',
          'ok' if time_ok else 'MISSED',
        ),
        ('AP50', metrics['AP50'], f'>= {FLAGS.target_ap50}', 'ok' if ap50_ok else 'MISSED'),
        ('AP', metrics['AP'], None, None),
        ('AP75', metrics['AP75'], None, None),
      ],
    )
  )
  sys.exit(0 if ap50_ok and time_ok else 1)


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

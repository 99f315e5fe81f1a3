r"""Times a README demo from nothing and checks its targets (issues 3, 10 and 15).

  python tools/measure_demo.py [--task=maskrcnn|classification] \
      [--output_dir=/tmp/spinenet_demo_measure]

Runs `spinenet-demo --task=<task>` in a fresh process and a fresh output folder
(data generation, training, evaluation: everything after `pip install`),
measures the wall time, reads the held-out metrics the run wrote, and
prints them beside the targets (`workflows.demo.DEMO_TARGETS`) on a 2-core CPU
machine: RetinaNet AP50 >= 0.85; Mask R-CNN box AP >= 0.45 and mask AP >= 0.40
(COCO AP@[.5:.95]); both within 15 minutes; the classifier top-1 >= 0.5 within
10 minutes (`DEMO_TARGET_MINUTES_BY_TASK`). Machines of this kind differ
several-fold in speed, so the machine's float32 matmul GFLOP/s is printed beside
the wall time. Exits 1 if a target is missed.
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
  flags.DEFINE_enum('task', 'retinanet', demo.DEMO_TASKS, 'The demo to measure.', **fv)
  flags.DEFINE_string(
    'output_dir', '/tmp/spinenet_demo_measure', 'Fresh folder for the run (deleted first).', **fv
  )
  flags.DEFINE_float(
    'target_minutes',
    None,
    "Wall time the demo must stay within (default: the task's DEMO_TARGET_MINUTES_BY_TASK).",
    **fv,
  )
  flags.DEFINE_multi_string('gin_param', [], 'Passed through to the demo.', **fv)


def main(argv) -> None:
  """Runs and times the demo; prints the metrics against the targets."""
  flag_groups.no_positional_arguments(argv)
  shutil.rmtree(FLAGS.output_dir, ignore_errors=True)
  result = demo.time_demo_command(FLAGS.output_dir, FLAGS.gin_param, task=FLAGS.task)
  minutes = result['minutes']
  if result['returncode']:
    sys.exit(f'The demo failed (exit {result["returncode"]}) after {minutes:.1f} min.')
  metrics = result['metrics']
  target_minutes = FLAGS.target_minutes or demo.DEMO_TARGET_MINUTES_BY_TASK[FLAGS.task]
  rows, ok = demo.target_rows(FLAGS.task, metrics, minutes, target_minutes)
  gflops = timing.matmul_gflops()
  print(
    f'demo {FLAGS.task}: {os.cpu_count()} CPUs, float32 matmul {gflops:.0f} GFLOP/s, '
    f'step {metrics["step"]}'
  )
  print(tables.format_table(('', 'value', 'target', ''), rows))
  sys.exit(0 if ok else 1)


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

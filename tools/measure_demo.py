r"""Times the README's demo from nothing and checks its target (issue 3).

  python tools/measure_demo.py [--output_dir=/tmp/spinenet_demo_measure] [--keep]

Runs `python -m official_spinenet.demo` in a fresh output folder (data
generation, training, evaluation: everything after `pip install`), measures the
wall time, reads the held-out COCO metrics the run wrote to
<output_dir>/model/metrics.json, and prints them beside the target: AP50 >= 0.8
within 15 minutes on a 2-core CPU machine. Exits 1 if the target is missed.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', '/tmp/spinenet_demo_measure', 'Fresh folder for the run '
                    '(deleted first).')
flags.DEFINE_float('target_ap50', 0.8, 'AP50 the demo must reach.')
flags.DEFINE_float('target_minutes', 15.0, 'Wall time the demo must stay within.')
flags.DEFINE_multi_string('gin_param', [], 'Passed through to the demo.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  del argv
  shutil.rmtree(FLAGS.output_dir, ignore_errors=True)
  command = [sys.executable, '-m', 'official_spinenet.demo', f'--output_dir={FLAGS.output_dir}']
  command += [f'--gin_param={p}' for p in FLAGS.gin_param]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]))
  start = time.time()
  result = subprocess.run(command, env=env, check=False)
  minutes = (time.time() - start) / 60
  if result.returncode:
    print(f'The demo failed (exit {result.returncode}) after {minutes:.1f} min.')
    sys.exit(1)
  with open(os.path.join(FLAGS.output_dir, 'model', 'metrics.json')) as f:
    metrics = json.load(f)
  ap50_ok = metrics['AP50'] >= FLAGS.target_ap50
  time_ok = minutes <= FLAGS.target_minutes
  print(f'demo: {os.cpu_count()} CPUs, step {metrics["step"]}')
  print(f'  wall time  {minutes:6.1f} min   (target <= {FLAGS.target_minutes:.0f})  '
        f'{"ok" if time_ok else "MISSED"}')
  print(f'  AP50       {metrics["AP50"]:6.3f}       (target >= {FLAGS.target_ap50})  '
        f'{"ok" if ap50_ok else "MISSED"}')
  print(f'  AP         {metrics["AP"]:6.3f}')
  print(f'  AP75       {metrics["AP75"]:6.3f}')
  sys.exit(0 if ap50_ok and time_ok else 1)


if __name__ == '__main__':
  app.run(main)

r"""SIGKILLs a tiny training run N times at random moments and checks each resume (issue 14).

  python tools/kill_and_resume.py --num_kills=20 [--output_dir=/tmp/spinenet_kill_and_resume]

Each run of `spinenet-train` (tiny RetinaNet, shapes data, one step per loop, a
checkpoint every --interval steps) is killed with SIGKILL a random 0..--max_delay
seconds after its first progress line, then started again in the same model
dir. Checks (`workflows.kill_and_resume`): every checkpoint restorable, each
resume from the newest checkpoint, no progress lost beyond the interval, the
last (unkilled) run reaches its final step, no temporary files left. Prints one
row per run and exits 1 if a check failed.
"""

import shutil
import sys

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import tables
from official_spinenet.workflows import kill_and_resume

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer('num_kills', 20, 'SIGKILLs before the last, unkilled run.', **fv)
  flags.DEFINE_float('max_delay', 6.0, 'Seconds after the first step within which to kill.', **fv)
  flags.DEFINE_integer('interval', 2, 'TrainerConfig.checkpoint_interval (steps).', **fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the kill moments.', **fv)
  flags.DEFINE_string(
    'output_dir', '/tmp/spinenet_kill_and_resume', 'Fresh folder (deleted first).', **fv
  )


def main(argv) -> None:
  """Kills, resumes, checks; prints the table and the verdict."""
  flag_groups.no_positional_arguments(argv)
  shutil.rmtree(FLAGS.output_dir, ignore_errors=True)
  result = kill_and_resume.kill_and_resume(
    FLAGS.output_dir, FLAGS.num_kills, FLAGS.max_delay, FLAGS.interval, FLAGS.seed
  )
  header = ('run', 'kill after s', 'resumed at', 'from newest', 'logged step', 'newest ckpt')
  header += ('lost steps', 'unreadable ckpts', 'temp files')
  print(tables.format_table(header, kill_and_resume.summary_rows(result), digits=1))
  failures = kill_and_resume.verdict(result)
  print(
    f'{FLAGS.num_kills} SIGKILLs, checkpoint interval {FLAGS.interval}: final step '
    f'{result["final"]["newest"]}/{result["final_step"]}; '
    + ('all checks held.' if not failures else 'FAILED: ' + '; '.join(failures))
  )
  sys.exit(1 if failures else 0)


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

r"""Proxy fidelity: the search proxy's ranking of architectures against full training's (issue 12).

  python tools/proxy_fidelity.py --output_dir=/tmp/proxy_fidelity            # 8 architectures
  python tools/proxy_fidelity.py --proxy_steps=300,150,75 --num_random=5      # more of both
  python tools/proxy_fidelity.py --random_intermediate_levels=3,4             # 7-block randoms

Trains SpineNet-49, the four R-SP presets and --num_random random points of the SpineNet
space with the demo protocol and with each proxy (--proxy_steps), two jobs at a time,
then prints each architecture's held-out AP / AP50 under every protocol and Kendall's tau
of each proxy against full training, and draws proxy AP against full AP
(docs/proxy_fidelity.png; --docs_dir). Runs again resume: finished jobs are kept. What is
trained and how: `official_spinenet.workflows.proxy_fidelity`.
"""

import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import proxy_fidelity

FLAGS = flags.FLAGS
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  d = proxy_fidelity.FidelityOptions()
  flags.DEFINE_string('output_dir', d.output_dir, 'Data, jobs and fidelity.json / .md.', **fv)
  flags.DEFINE_integer('num_random', d.num_random, 'Random SpineNet-space points.', **fv)
  flags.DEFINE_integer('seed', d.seed, 'Seed of the random points.', **fv)
  flag_groups.define_integer_list(
    'random_intermediate_levels',
    [],
    "Intermediate base levels of the random points' space (empty: SpineNet's 11 blocks).",
    **fv,
  )
  flag_groups.define_integer_list(
    'proxy_steps', d.proxy_steps, 'One proxy per step count.', lower_bound=1, **fv
  )
  flags.DEFINE_multi_string(
    'gin_param', [], 'Bindings for every job (before data and architecture).', **fv
  )
  flags.DEFINE_integer('workers', d.workers, 'Jobs at a time, each in its own process.', **fv)
  flags.DEFINE_integer('threads_per_job', 0, 'TF threads per job (0: CPUs / workers).', **fv)
  flags.DEFINE_string('docs_dir', DOCS_DIR, 'Where proxy_fidelity.png goes (empty: nowhere).', **fv)


def main(argv) -> None:
  """flags -> proxy_fidelity.run_study(); prints the tables."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):
    levels = tuple(FLAGS.random_intermediate_levels)
    options = proxy_fidelity.FidelityOptions(
      output_dir=FLAGS.output_dir,
      num_random=FLAGS.num_random,
      seed=FLAGS.seed,
      random_space_options={'intermediate_block_levels': levels} if levels else {},
      proxy_steps=tuple(FLAGS.proxy_steps),
      gin_params=tuple(FLAGS.gin_param),
      workers=FLAGS.workers,
      threads_per_job=FLAGS.threads_per_job,
    )
  study = proxy_fidelity.run_study(options)
  if FLAGS.docs_dir:
    proxy_fidelity.plot(
      study['rows'], study['tau'], os.path.join(FLAGS.docs_dir, 'proxy_fidelity.png')
    )
  print(study['markdown'])
  print(f"Jobs' total time: {study['total_seconds'] / 60:.1f} min")


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

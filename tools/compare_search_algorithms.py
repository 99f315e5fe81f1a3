r"""PPO, regularized evolution and random search at an equal budget (issue 12).

  python tools/compare_search_algorithms.py --output_dir=/tmp/compare \
      --gin_param="ProxyConfig.gin_params = ['TRAIN_STEPS = 75']" --num_trials=24
  python tools/compare_search_algorithms.py --gin_file=testing/search_synthetic.gin \
      --num_trials=300 --output_dir=/tmp/compare_synthetic      # no training: minutes

Runs one search per algorithm and seed (--algorithms, --seeds), each with --num_trials
trials of the gin files' space and proxy (default search/spinenet_shapes.gin), then
prints each one's best reward and draws the best reward so far against trials, mean
over seeds with a min-max band (docs/search_algorithms.png; --docs_dir). Running it
again resumes; Ctrl+C stops it (exit status 130, the same command resumes).
How: `official_spinenet.workflows.search_comparison`.
"""

import os
import sys

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import search
from official_spinenet.workflows import search_comparison

FLAGS = flags.FLAGS
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  d = search_comparison.ComparisonOptions()
  flag_groups.define_gin_flags(flag_values, purpose='the searches (SearchConfig, ProxyConfig)')
  flag_values.set_default('gin_file', list(d.gin_files))
  flags.DEFINE_string('output_dir', d.output_dir, 'One search per <algorithm>/seed<k>.', **fv)
  flags.DEFINE_list('algorithms', list(d.algorithms), 'Algorithms to compare.', **fv)
  flag_groups.define_integer_list('seeds', d.seeds, 'One search per seed.', lower_bound=0, **fv)
  flags.DEFINE_integer('num_trials', d.num_trials, 'Trials of every search.', **fv)
  flags.DEFINE_string(
    'docs_dir', DOCS_DIR, 'Where search_algorithms.png goes (empty: nowhere).', **fv
  )
  flags.DEFINE_string('plot_name', 'search_algorithms.png', 'File name of the plot.', **fv)


def main(argv) -> None:
  """flags -> search_comparison.run_comparison(); prints the table."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):
    options = search_comparison.ComparisonOptions(
      output_dir=FLAGS.output_dir,
      gin_files=tuple(FLAGS.gin_file),
      gin_params=tuple(FLAGS.gin_param),
      algorithms=tuple(FLAGS.algorithms),
      seeds=tuple(FLAGS.seeds),
      num_trials=FLAGS.num_trials,
    )
    try:
      study = search_comparison.run_comparison(options)
    except search.SearchStoppedError as stopped:  # Ctrl+C: say how to resume, exit as interrupted
      print(stopped, file=sys.stderr)
      sys.exit(search.EXIT_STOPPED)
  if FLAGS.docs_dir:
    path = os.path.join(FLAGS.docs_dir, FLAGS.plot_name)
    search_comparison.plot(study['curves'], path, study['title'])
  print(study['markdown'])
  print(f"Trials' total time: {study['trial_seconds'] / 60:.1f} min")


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

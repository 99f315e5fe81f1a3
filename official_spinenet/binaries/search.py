r"""spinenet-search: architecture search on the shapes proxy, trials on Ray Tune.

  spinenet-search --gin_file=search/spinenet_shapes.gin --output_dir=/tmp/search
  spinenet-search --gin_file=search/nasfpn_shapes.gin --output_dir=/tmp/search_nasfpn \
    --gin_param='SearchConfig.num_trials = 32' --gin_param="SearchConfig.algorithm = 'evolution'"

The gin file binds `SearchConfig` (space, algorithm, budget, concurrency) and
`ProxyConfig` (what a trial trains). Prints one line per finished trial; writes
<output_dir>/trials.csv and, at the end, the best architectures to
<output_dir>/best/ (`spinenet.block_specs='<output_dir>/best/1.json'` trains one
with spinenet-train). Ctrl+C stops it cleanly (Ray Tune saves its state; the best of
the trials done so far are written, and the exit status is 130); running it again
resumes a stopped or killed search. On a Ray
cluster: `RAY_ADDRESS=auto spinenet-search ...` with --output_dir on shared storage.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from official_spinenet import configurables
from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import search

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  flag_groups.define_gin_flags(flag_values, purpose='the search (SearchConfig, ProxyConfig)')
  flag_values.set_default('gin_file', ['search/spinenet_shapes.gin'])
  flags.DEFINE_string(
    'output_dir',
    None,
    'The run: trials.csv, best/, Ray Tune state; an existing run resumes.',
    required=True,
    flag_values=flag_values,
  )


def main(argv) -> None:
  """flags -> gin -> workflows.search.run_search()."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors():
    configurables.parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    config = configurables.search_config()
    result = search.run_search(config, FLAGS.output_dir)
  print(
    f'{result.num_trials_done} trials; best reward {result.best_reward}; '
    f'best architecture {result.best_specs_path}; all trials {result.csv_path}'
  )
  if not result.finished:  # stopped by Ctrl+C: say so, and exit as an interrupted command
    print(result.stopped_message, file=sys.stderr)
    sys.exit(search.EXIT_STOPPED)
  logging.info('Search done: %d trials.', result.num_trials_done)


def run() -> None:
  """Console-script entry point (`spinenet-search`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

r"""AP against latency for every exit of one anytime NAS-FPN RetinaNet (issue 4).

  python tools/anytime_tradeoff.py                       # train the demo, then measure
  python tools/anytime_tradeoff.py --model_dir=/tmp/anytime_tradeoff/model   # measure only
  python tools/anytime_tradeoff.py --train_steps=300 --latency_runs=20       # quicker

Prints a Markdown table, writes it to docs/anytime_tradeoff.md with a plot of AP vs
latency (docs/anytime_tradeoff.png; --docs_dir), and the numbers as JSON to
<output_dir>/anytime_tradeoff.json. What is measured and how:
`official_spinenet.workflows.anytime_tradeoff`.
"""

import json
import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import anytime_tradeoff

FLAGS = flags.FLAGS
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  d = anytime_tradeoff.TradeoffOptions()
  flags.DEFINE_string(
    'output_dir',
    d.output_dir,
    'Data go to <output_dir>/data, the trained model to <output_dir>/model.',
    **fv,
  )
  flags.DEFINE_string(
    'model_dir',
    None,
    'A trained anytime run to measure instead of training one (its operative_config.gin is used).',
    **fv,
  )
  flags.DEFINE_integer('train_steps', None, 'Training steps (default: the gin file\'s).', **fv)
  flags.DEFINE_multi_string(
    'gin_param', [], 'Extra gin bindings for training and evaluation.', **fv
  )
  flags.DEFINE_integer('num_train', d.num_train, 'Training images to generate.', **fv)
  flags.DEFINE_integer('num_val', d.num_val, 'Held-out images to generate.', **fv)
  flags.DEFINE_integer('latency_runs', d.latency_runs, 'Timed runs per exit (median).', **fv)
  flags.DEFINE_integer('warmup_runs', d.warmup_runs, 'Untimed runs per exit after tracing.', **fv)
  flags.DEFINE_string(
    'docs_dir', DOCS_DIR, 'Where anytime_tradeoff.md and .png go (empty: do not write them).', **fv
  )


def main(argv) -> None:
  """flags -> anytime_tradeoff.run_tradeoff(); prints the table and the setup."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):  # a --model_dir without a trained run
    table, setup = anytime_tradeoff.run_tradeoff(
      anytime_tradeoff.TradeoffOptions(
        output_dir=FLAGS.output_dir,
        model_dir=FLAGS.model_dir,
        train_steps=FLAGS.train_steps,
        gin_params=FLAGS.gin_param,
        num_train=FLAGS.num_train,
        num_val=FLAGS.num_val,
        latency_runs=FLAGS.latency_runs,
        warmup_runs=FLAGS.warmup_runs,
        docs_dir=FLAGS.docs_dir,
      )
    )
  print(table)
  print(json.dumps(setup, indent=1))


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

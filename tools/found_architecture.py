r"""A found architecture against the published one, both trained in full (issue 12).

  python tools/found_architecture.py --found_specs=/tmp/compare/ppo/seed0/best/1.json \
      --output_dir=/tmp/found
  python tools/found_architecture.py --found_space=nasfpn \
      --found_specs=/tmp/search_nasfpn/best/1.json --output_dir=/tmp/found_nasfpn

Trains the found specs (a search's best/<k>.json) and the published architecture of its
family at the same width (SpineNet-49 with the demo protocol, and SpineNet-49 scaled to
the found one's multiply-adds; NAS-FPN's cells with its proxy run for 2000 steps) on the
demo's shapes data, two at a time, then prints held-out AP / AP50, params,
multiply-adds, CPU latency at batch 1 and training time, and draws the two side by side
(docs/search_<builder>_found.png, docs/search_<published>.png; --docs_dir). Running it
again resumes. How: `official_spinenet.workflows.found_architecture`.
"""

import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import found_architecture

FLAGS = flags.FLAGS
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  d = found_architecture.FoundOptions(found_specs='')
  flags.DEFINE_string('found_specs', None, "A search's best/<k>.json.", required=True, **fv)
  flags.DEFINE_string('found_space', d.found_space, 'The space the specs come from.', **fv)
  flags.DEFINE_string('output_dir', d.output_dir, 'Data, jobs, drawings, found.json.', **fv)
  flags.DEFINE_multi_string('gin_param', [], 'Bindings for every job.', **fv)
  flags.DEFINE_boolean('equal_madds', d.equal_madds, 'Also the baseline at equal MAdds.', **fv)
  flags.DEFINE_integer('workers', d.workers, 'Jobs at a time, each in its own process.', **fv)
  flags.DEFINE_integer('latency_image_size', 0, 'Latency input size (0: trained size).', **fv)
  flags.DEFINE_integer('latency_runs', d.latency_runs, 'Timed forward passes.', **fv)
  flags.DEFINE_string('docs_dir', DOCS_DIR, 'Where the drawings go (empty: nowhere).', **fv)


def main(argv) -> None:
  """flags -> found_architecture.run_study(); prints the table."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):
    options = found_architecture.FoundOptions(
      found_specs=FLAGS.found_specs,
      found_space=FLAGS.found_space,
      output_dir=FLAGS.output_dir,
      gin_params=tuple(FLAGS.gin_param),
      equal_madds=FLAGS.equal_madds,
      workers=FLAGS.workers,
      latency_image_size=FLAGS.latency_image_size,
      latency_runs=FLAGS.latency_runs,
    )
    study = found_architecture.run_study(options)
  if FLAGS.docs_dir:
    found_architecture.publish_drawings(study['drawings'], FLAGS.docs_dir)
  print(study['markdown'])


def run() -> None:
  """Command-line entry point."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

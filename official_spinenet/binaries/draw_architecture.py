r"""spinenet-draw-architecture: draws a scale-permuted architecture as PNG and SVG.

  spinenet-draw-architecture --model=spinenet --output=docs/spinenet49
  spinenet-draw-architecture --model=spinenet_mobile --output=docs/spinenet_mobile49
  spinenet-draw-architecture --block_specs_json=found.json --output=/tmp/found \
      --title='Searched architecture'
  spinenet-draw-architecture --model=nasfpn --output=docs/nasfpn_cells
  spinenet-draw-architecture --block_specs_json=best/1.json --stem_levels=2,2,3,3 --output=/tmp/rsp

SpineNet Fig. 4 style (`official_spinenet.visualize.architecture`). With
--block_specs_json the specs come from a file written by
`spinenet_specs.save_block_specs` (for --model=nasfpn, cell specs); --model then
only chooses the stem, which --stem_levels may replace (the R-SP stems of the
search). spinenet-search draws its best architectures itself. Prints the paths
written.
"""

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.visualize import architecture

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_enum(
    'model',
    'spinenet',
    architecture.FAMILIES,
    'Architecture family: its built-in block specs (NAS-FPN: cells) and its stem.',
    **fv,
  )
  flags.DEFINE_string(
    'block_specs_json',
    None,
    'Optional JSON block-spec (cell-spec for nasfpn) file; replaces the built-in table.',
    **fv,
  )
  flag_groups.define_integer_list(
    'stem_levels', None, "Stem block levels instead of the family's, e.g. 2,2,3,3.", **fv
  )
  flags.DEFINE_string(
    'output', 'spinenet49', 'Output path prefix; writes <output>.png and <output>.svg.', **fv
  )
  flags.DEFINE_integer('min_level', 3, 'Lowest endpoint level.', **fv)
  flags.DEFINE_integer('max_level', 7, 'Highest endpoint level.', **fv)
  flags.DEFINE_string(
    'title', None, 'Figure title (default: the model name or the JSON file name).', **fv
  )


def main(argv) -> None:
  """flags -> architecture.draw_published(); prints the paths."""
  flag_groups.no_positional_arguments(argv)
  paths = architecture.draw_published(
    FLAGS.model,
    FLAGS.output,
    block_specs_json=FLAGS.block_specs_json,
    title=FLAGS.title,
    min_level=FLAGS.min_level,
    max_level=FLAGS.max_level,
    stem_levels=list(FLAGS.stem_levels or ()),
  )
  for path in paths:
    print(path)


def run() -> None:
  """Console-script entry point (`spinenet-draw-architecture`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

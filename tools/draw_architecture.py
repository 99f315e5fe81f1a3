r"""Draws a scale-permuted architecture (SpineNet Fig. 4 style) as PNG and SVG.

Usage, from the repository root:

  python tools/draw_architecture.py --model=spinenet --output=docs/spinenet49
  python tools/draw_architecture.py --model=spinenet_mobile \
      --output=docs/spinenet_mobile49
  python tools/draw_architecture.py --block_specs_json=found.json \
      --output=/tmp/found --title='Searched architecture'

With --block_specs_json the specs come from a file written by
`spinenet_specs.save_block_specs`; --model then only chooses the stem.
"""

import os
import sys

from absl import app
from absl import flags

try:
  from official_spinenet.visualize import architecture
except ImportError:
  # Run as `python tools/draw_architecture.py` without the package installed:
  # the repository root is then not on sys.path (only tools/ is).
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from official_spinenet.visualize import architecture  # pylint: disable=g-import-not-at-top
from official_spinenet.modeling.backbones import spinenet_specs  # pylint: disable=g-import-not-at-top,g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_enum('model', 'spinenet', sorted(architecture.ARCHITECTURES),
                  'Architecture family: its built-in block specs and its stem.')
flags.DEFINE_string('block_specs_json', None,
                    'Optional JSON block-spec file; replaces the built-in table.')
flags.DEFINE_string('output', 'spinenet49',
                    'Output path prefix; writes <output>.png and <output>.svg.')
flags.DEFINE_integer('min_level', 3, 'Lowest endpoint level.')
flags.DEFINE_integer('max_level', 7, 'Highest endpoint level.')
flags.DEFINE_string('title', None, 'Figure title (default: the model name or the '
                    'JSON file name).')


def _specs_and_title(preset: architecture.Architecture):
  """The block specs to draw and a default title for them."""
  if FLAGS.block_specs_json:
    specs = spinenet_specs.load_block_specs(FLAGS.block_specs_json)
    return specs, os.path.splitext(os.path.basename(FLAGS.block_specs_json))[0]
  return spinenet_specs.build_block_specs(preset.block_specs), preset.title


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  preset = architecture.ARCHITECTURES[FLAGS.model]
  specs, default_title = _specs_and_title(preset)
  paths = architecture.draw_architecture(
      specs, preset.stem_levels, preset.stem_block_fn, FLAGS.output,
      title=FLAGS.title if FLAGS.title is not None else default_title,
      min_level=FLAGS.min_level, max_level=FLAGS.max_level)
  for path in paths:
    print(path)


if __name__ == '__main__':
  app.run(main)

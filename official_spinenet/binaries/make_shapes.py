r"""spinenet-make-shapes: writes the synthetic shapes detection dataset.

  spinenet-make-shapes --output_dir=/tmp/shapes --num_train=1000 --num_val=200

COCO instances JSON, PNG images and sharded TFRecords; see
`official_spinenet.data.shapes.make_shapes_dataset` for the layout. Prints the
paths written, as JSON.
"""

import json

from absl import app
from absl import flags

from official_spinenet.data import shapes
from official_spinenet.utils import flags as flag_groups
from official_spinenet.utils import image_sizes

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'Folder to write the dataset to.', required=True, **fv)
  flags.DEFINE_integer('num_train', 1000, 'Training images.', lower_bound=1, **fv)
  flags.DEFINE_integer('num_val', 200, 'Validation images (0: none).', lower_bound=0, **fv)
  flags.DEFINE_list('image_size', ['128'], 'Image size: one int (square) or height,width.', **fv)
  flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives the same files.', **fv)
  flags.DEFINE_integer('num_shards', 2, 'TFRecord shards per split.', lower_bound=1, **fv)
  flags.DEFINE_boolean('include_masks', True, 'Write instance masks into the TFRecords.', **fv)


def main(argv) -> None:
  """flags -> shapes.make_shapes_dataset(); prints the paths as JSON."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):
    image_size = image_sizes.parse_image_size(FLAGS.image_size, '--image_size')
  result = shapes.make_shapes_dataset(
    output_dir=FLAGS.output_dir,
    num_train=FLAGS.num_train,
    num_val=FLAGS.num_val,
    image_size=image_size,
    seed=FLAGS.seed,
    num_shards=FLAGS.num_shards,
    include_masks=FLAGS.include_masks,
  )
  print(json.dumps(result, indent=2))


def run() -> None:
  """Console-script entry point (`spinenet-make-shapes`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

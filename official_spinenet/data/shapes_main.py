r"""Writes the synthetic shapes detection dataset (COCO JSON, PNGs, TFRecords).

  spinenet-make-shapes --output_dir=/tmp/shapes --num_train=1000 --num_val=200

or `python -m official_spinenet.data.shapes_main ...`. See
`official_spinenet.data.shapes.make_shapes_dataset` for the layout.
"""
import json

from absl import app
from absl import flags

from official_spinenet.data import shapes

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines this binary's flags.

  Called from `run()` rather than at import, so that importing this module
  (tests, other binaries) never registers flags that could clash.
  """
  flags.DEFINE_string('output_dir', None, 'Folder to write the dataset to.',
                      required=True)
  flags.DEFINE_integer('num_train', 1000, 'Training images.', lower_bound=1)
  flags.DEFINE_integer('num_val', 200, 'Validation images (0: none).',
                       lower_bound=0)
  flags.DEFINE_list('image_size', ['128'],
                    'Image size: one int (square) or height,width.')
  flags.DEFINE_integer('seed', 0, 'Random seed; the same seed gives the same '
                       'files.')
  flags.DEFINE_integer('num_shards', 2, 'TFRecord shards per split.',
                       lower_bound=1)
  flags.DEFINE_boolean('include_masks', True,
                       'Write instance masks into the TFRecords.')


def _parse_image_size(values):
  try:
    sizes = [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f'--image_size must be integers, got {values}') from e
  if len(sizes) not in (1, 2):
    raise app.UsageError(
        f'--image_size takes one int or height,width; got {values}')
  return sizes[0] if len(sizes) == 1 else tuple(sizes)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = shapes.make_shapes_dataset(
      output_dir=FLAGS.output_dir,
      num_train=FLAGS.num_train,
      num_val=FLAGS.num_val,
      image_size=_parse_image_size(FLAGS.image_size),
      seed=FLAGS.seed,
      num_shards=FLAGS.num_shards,
      include_masks=FLAGS.include_masks)
  print(json.dumps(result, indent=2))


def run():
  """Console-script entry point (`spinenet-make-shapes`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

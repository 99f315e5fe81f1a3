r"""spinenet-create-classification-tfrecord: an image folder per class -> TFRecords.

Example (ImageNet's training set, one folder per synset):

  spinenet-create-classification-tfrecord \
    --image_dir=/data/imagenet/train \
    --output_prefix=/data/imagenet/tfrecords/train \
    --num_shards=1024

writes /data/imagenet/tfrecords/train-0NNNN-of-01024.tfrecord (`image/encoded`,
`image/class/label` = index of the class folder in sorted order) and
/data/imagenet/tfrecords/labels.txt (the folder names, line i naming label i), the
files ClassificationTask reads (`data.image_folder_tfrecord`). A file that is not
a decodable image stops the run with an error naming it, unless --skip_unreadable.
"""

from absl import app
from absl import flags

from official_spinenet.data import image_folder_tfrecord
from official_spinenet.utils import flags as flag_groups

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string(
    'image_dir', None, 'Folder with one sub-folder of images per class.', required=True, **fv
  )
  flags.DEFINE_string(
    'output_prefix',
    None,
    'Path prefix of the shards: <prefix>-00000-of-<num_shards>.tfrecord; labels.txt '
    'goes in the same folder.',
    required=True,
    **fv,
  )
  flags.DEFINE_integer('num_shards', 8, 'Number of shards.', lower_bound=1, **fv)
  flags.DEFINE_boolean(
    'skip_unreadable',
    False,
    'Leave out (and count) files that are not decodable images instead of stopping.',
    **fv,
  )
  flags.DEFINE_integer('seed', 0, 'Seed of the (shuffled) order of the records.', **fv)
  flags.DEFINE_integer(
    'num_workers',
    image_folder_tfrecord.DEFAULT_NUM_WORKERS,
    'Threads reading and decoding images (the output does not depend on it).',
    lower_bound=1,
    **fv,
  )


def main(argv) -> None:
  """flags -> image_folder_tfrecord.convert_image_folder_to_tfrecords()."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors():
    summary = image_folder_tfrecord.convert_image_folder_to_tfrecords(
      image_dir=FLAGS.image_dir,
      output_prefix=FLAGS.output_prefix,
      num_shards=FLAGS.num_shards,
      skip_unreadable=FLAGS.skip_unreadable,
      seed=FLAGS.seed,
      num_workers=FLAGS.num_workers,
    )
  print(summary.line())


def run() -> None:
  """Console-script entry point (`spinenet-create-classification-tfrecord`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

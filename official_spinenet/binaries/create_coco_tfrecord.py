r"""spinenet-create-coco-tfrecord: a COCO instances JSON and its images -> TFRecords.

Example (COCO 2017 val with masks, for Mask R-CNN):

  spinenet-create-coco-tfrecord \
    --image_dir=/data/coco/val2017 \
    --annotation_file=/data/coco/annotations/instances_val2017.json \
    --output_prefix=/data/coco/tfrecords/val \
    --num_shards=8 --include_masks

writes /data/coco/tfrecords/val-0000{0..7}-of-00008.tfrecord in the layout
tf-models-official's TfExampleDecoder reads (`data.coco_tfrecord`). Any missing or
undecodable image, malformed JSON or out-of-image box stops the run with an error
naming it.
"""

from absl import app
from absl import flags

from official_spinenet.data import coco_tfrecord
from official_spinenet.utils import flags as flag_groups

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string(
    'image_dir', None, 'Folder holding the images named in the JSON.', required=True, **fv
  )
  flags.DEFINE_string('annotation_file', None, 'COCO instances JSON file.', required=True, **fv)
  flags.DEFINE_string(
    'output_prefix',
    None,
    'Path prefix of the shards: <prefix>-00000-of-<num_shards>.tfrecord.',
    required=True,
    **fv,
  )
  flags.DEFINE_integer('num_shards', 32, 'Number of shards.', lower_bound=1, **fv)
  flags.DEFINE_boolean(
    'include_masks', False, 'Write PNG instance masks (needed to train Mask R-CNN).', **fv
  )
  flags.DEFINE_integer(
    'max_images', None, 'Convert only the first N images of the JSON.', lower_bound=1, **fv
  )


def main(argv) -> None:
  """flags -> coco_tfrecord.convert_coco_to_tfrecords()."""
  flag_groups.no_positional_arguments(argv)
  summary = coco_tfrecord.convert_coco_to_tfrecords(
    image_dir=FLAGS.image_dir,
    annotation_file=FLAGS.annotation_file,
    output_prefix=FLAGS.output_prefix,
    num_shards=FLAGS.num_shards,
    include_masks=FLAGS.include_masks,
    max_images=FLAGS.max_images,
  )
  print(
    f'Wrote {summary.num_images} images, {summary.num_objects} objects '
    f'to {summary.tfrecord_pattern}'
  )


def run() -> None:
  """Console-script entry point (`spinenet-create-coco-tfrecord`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

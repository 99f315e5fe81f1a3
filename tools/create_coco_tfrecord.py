r"""Converts a COCO instances JSON and its images to sharded TFRecord files.

Example (COCO 2017 val with masks, for Mask R-CNN):

  python tools/create_coco_tfrecord.py \
    --image_dir=/data/coco/val2017 \
    --annotation_file=/data/coco/annotations/instances_val2017.json \
    --output_prefix=/data/coco/tfrecords/val \
    --num_shards=8 --include_masks

writes /data/coco/tfrecords/val-0000{0..7}-of-00008.tfrecord in the layout
tf-models-official's TfExampleDecoder reads. Any missing or undecodable image,
malformed JSON or out-of-image box stops the run with an error naming it.
"""
from absl import app
from absl import flags
from absl import logging

from official_spinenet.data import coco_tfrecord

_IMAGE_DIR = flags.DEFINE_string(
    'image_dir', None, 'Folder holding the images named in the JSON.',
    required=True)
_ANNOTATION_FILE = flags.DEFINE_string(
    'annotation_file', None, 'COCO instances JSON file.', required=True)
_OUTPUT_PREFIX = flags.DEFINE_string(
    'output_prefix', None,
    'Path prefix of the shards: <prefix>-00000-of-<num_shards>.tfrecord.',
    required=True)
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 32, 'Number of shards.',
                                   lower_bound=1)
_INCLUDE_MASKS = flags.DEFINE_boolean(
    'include_masks', False,
    'Write PNG instance masks (needed to train Mask R-CNN).')
_MAX_IMAGES = flags.DEFINE_integer(
    'max_images', None, 'Convert only the first N images of the JSON.',
    lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  summary = coco_tfrecord.convert_coco_to_tfrecords(
      image_dir=_IMAGE_DIR.value,
      annotation_file=_ANNOTATION_FILE.value,
      output_prefix=_OUTPUT_PREFIX.value,
      num_shards=_NUM_SHARDS.value,
      include_masks=_INCLUDE_MASKS.value,
      max_images=_MAX_IMAGES.value)
  logging.info('Shards: %s', summary.tfrecord_pattern)
  print(f'Wrote {summary.num_images} images, {summary.num_objects} objects '
        f'to {summary.tfrecord_pattern}')


if __name__ == '__main__':
  app.run(main)

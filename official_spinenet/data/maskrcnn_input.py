"""Mask R-CNN input pipeline: TFRecords -> (images, labels) batches.

Decoding and parsing are Model Garden's `TfExampleDecoder(include_mask=True)`
and `maskrcnn_input.Parser` (flip, scale jitter, resize-and-pad, RPN anchor
labels sampled per image, ground-truth boxes, classes and instance masks cropped
to their boxes); the tf.data pipeline is the one every detection task shares
(`retinanet_input.parsed_batches`).
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.data import record_check
from official_spinenet.data import retinanet_input

MASK_FEATURE = 'image/object/mask'
CLASS_FEATURE = 'image/object/class/label'


def build_maskrcnn_dataset(
  file_pattern: str,
  is_training: bool,
  global_batch_size: int,
  image_size: Tuple[int, int],
  min_level: int,
  max_level: int,
  num_scales: int = 1,
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
  anchor_size: float = 8.0,
  include_mask: bool = True,
  rpn_match_threshold: float = 0.7,
  rpn_unmatched_threshold: float = 0.3,
  rpn_batch_size_per_im: int = 256,
  rpn_fg_fraction: float = 0.5,
  mask_crop_size: int = 112,
  aug_scale_min: float = 1.0,
  aug_scale_max: float = 1.0,
  aug_rand_hflip: bool = True,
  input_context: Optional[tf.distribute.InputContext] = None,
  shuffle_buffer_size: int = 1000,
  max_num_instances: int = 100,
  seed: Optional[int] = None,
  dtype: str = 'float32',
  skip_corrupt_records: bool = False,
) -> tf.data.Dataset:
  """A dataset of (images [B, H', W', 3], labels) for Mask R-CNN.

  Training labels: image_info [B, 4, 2], anchor_boxes {level: [B, h, w, 4A]},
  rpn_score_targets / rpn_box_targets per level, gt_boxes [B, I, 4] (model-input
  pixels), gt_classes [B, I], gt_masks [B, I, mask_crop_size, mask_crop_size]
  (each mask cropped to its box), padded to I = max_num_instances with -1.
  Eval labels: image_info, anchor_boxes and groundtruths (original-image boxes,
  classes, areas, is_crowds, source_id).

  Args:
    file_pattern: TFRecord glob (comma-separated globs allowed).
    is_training: training (augment, sample RPN targets, shuffle, repeat) or eval.
    global_batch_size: batch over all replicas.
    image_size: (height, width) of the model input (multiples of 2^max_level).
    min_level, max_level, num_scales, aspect_ratios, anchor_size: RPN anchors.
    include_mask: decode and return instance masks.
    rpn_match_threshold, rpn_unmatched_threshold: anchor IoUs for RPN positives
      and negatives (Faster R-CNN: 0.7 / 0.3).
    rpn_batch_size_per_im, rpn_fg_fraction: anchors sampled per image for the
      RPN loss and their positive fraction (256, 0.5).
    mask_crop_size: ground-truth mask crop size (the mask targets are resampled
      from it to the mask head's output size).
    aug_scale_min, aug_scale_max, aug_rand_hflip: training augmentation.
    input_context, shuffle_buffer_size, seed: as for RetinaNet.
    max_num_instances: ground-truth padding.
    dtype: image dtype.
    skip_corrupt_records: drop (count and log) records that cannot be read or
      decoded (`retinanet_input.parsed_batches`).

  Returns:
    tf.data.Dataset of (images, labels).
  """
  decoder = model_garden.load('tf_example_decoder').TfExampleDecoder(
    include_mask=include_mask, regenerate_source_id=False
  )
  parser = model_garden.load('maskrcnn_input').Parser(
    output_size=list(image_size),
    min_level=min_level,
    max_level=max_level,
    num_scales=num_scales,
    aspect_ratios=list(aspect_ratios),
    anchor_size=anchor_size,
    rpn_match_threshold=rpn_match_threshold,
    rpn_unmatched_threshold=rpn_unmatched_threshold,
    rpn_batch_size_per_im=rpn_batch_size_per_im,
    rpn_fg_fraction=rpn_fg_fraction,
    aug_rand_hflip=aug_rand_hflip and is_training,
    aug_scale_min=aug_scale_min if is_training else 1.0,
    aug_scale_max=aug_scale_max if is_training else 1.0,
    max_num_instances=max_num_instances,
    include_mask=include_mask,
    mask_crop_size=mask_crop_size,
    dtype=dtype,
  )
  return retinanet_input.parsed_batches(
    file_pattern,
    is_training,
    global_batch_size,
    input_context,
    shuffle_buffer_size,
    seed,
    decoder.decode,
    parser.parse_fn(is_training),
    skip_corrupt_records=skip_corrupt_records,
  )


def check_instance_masks(file_pattern: str, what: str) -> None:
  """Raises ValueError unless each file's first record with objects has masks.

  Reads one record per file (plain file I/O, cheap, before any model is built), so a
  Mask R-CNN run on box-only TFRecords fails at once, naming the file. A file whose
  first record cannot be read is left to `DetectionTask.validate` (which names it, or
  lets the pipeline skip it with skip_corrupt_records).

  Args:
    file_pattern: TFRecord glob(s).
    what: the setting the pattern came from, for the message.
  """
  for path in retinanet_input.list_files(file_pattern):
    try:
      serialized = record_check.first_record(path)
    except record_check.CorruptFileError:
      continue
    if serialized is not None:
      features = tf.train.Example.FromString(serialized).features.feature
      num_objects = len(features[CLASS_FEATURE].int64_list.value)
      num_masks = len(features[MASK_FEATURE].bytes_list.value)
      if num_objects and num_masks != num_objects:
        raise ValueError(
          f'{what}: {path} has no instance masks: its first record has {num_objects} objects '
          f'but {num_masks} {MASK_FEATURE!r} entries. Mask R-CNN needs one PNG mask per '
          'object (spinenet-create-coco-tfrecord --include_masks writes them); '
          'train a box-only model with a RetinaNet config instead.'
        )

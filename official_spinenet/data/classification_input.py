"""Image classification input pipeline: TFRecords -> (images, labels) batches.

Records hold `image/encoded` (JPEG or PNG bytes) and `image/class/label` (int64,
0-based), the layout `data.image_folder_tfrecord` writes and tf-models-official's
classification `Decoder` reads. Training images go through tf-models-official's
classification `Parser`: a random crop covering `crop_area_range` of the image
with aspect ratio in [3/4, 4/3] (the Inception crop of the SpineNet paper's
ImageNet protocol, Sec. 5.1; the centre crop when no crop fits), a random
horizontal flip, a bilinear resize to `image_size` and ImageNet mean / stddev
normalisation. Evaluation images go through `preprocess_eval_image` (centre crop
of 87.5% of the shorter side, resize, normalisation), which the SavedModel export
calls too, so a served model sees what the evaluation saw.

The tf.data pipeline itself (sharding, shuffling, batching) is the detection
tasks' `retinanet_input.parsed_batches`.
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.data import retinanet_input

IMAGE_KEY = 'image/encoded'
LABEL_KEY = 'image/class/label'
# The Inception crop's area range (tf-models-official's and the paper's default).
CROP_AREA_RANGE = (0.08, 1.0)


def preprocess_eval_image(
  image: tf.Tensor, image_size: Sequence[int], dtype: str = 'float32'
) -> tf.Tensor:
  """The evaluation preprocessing of one decoded image.

  The classification Parser's eval path for decoded images (its `inference_fn`):
  a centre square crop of 87.5% of the shorter side, a bilinear resize to
  image_size, then (x - MEAN_RGB) / STDDEV_RGB.

  Args:
    image: uint8 (or float 0..255) [H, W, 3].
    image_size: (height, width) of the model input.
    dtype: output dtype ('float32', 'bfloat16' or 'float16').

  Returns:
    [height, width, 3] normalised image of `dtype`.
  """
  parser = model_garden.load('classification_input').Parser
  image = parser.inference_fn(image, [int(s) for s in image_size])
  return tf.cast(image, dtype)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """JPEG or PNG bytes (grey, RGB or RGBA) -> uint8 [H, W, 3]."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _checked_label(label: tf.Tensor, num_classes: int) -> tf.Tensor:
  """The label, after an assertion that it lies in [0, num_classes).

  A dataset with more classes than the task (or a record without a label, which
  the decoder reads as -1) would otherwise train silently on wrong one-hot targets.
  """
  label = tf.cast(label, tf.int32)
  in_range = tf.logical_and(label >= 0, label < num_classes)
  message = tf.strings.format(
    'A record has image/class/label {} outside [0, num_classes={}).', (label, num_classes)
  )
  with tf.control_dependencies([tf.debugging.Assert(in_range, [message])]):
    return tf.identity(label)


def build_classification_dataset(
  file_pattern: str,
  is_training: bool,
  global_batch_size: int,
  image_size: Tuple[int, int],
  num_classes: int,
  input_context: Optional[tf.distribute.InputContext] = None,
  shuffle_buffer_size: int = 1000,
  seed: Optional[int] = None,
  aug_rand_hflip: bool = True,
  dtype: str = 'float32',
  skip_corrupt_records: bool = False,
  crop_area_range: Tuple[float, float] = CROP_AREA_RANGE,
) -> tf.data.Dataset:
  """A dataset of (images [B, height, width, 3], labels [B] int32).

  Training data is sharded (by input_context), shuffled, augmented (random crop,
  hflip if aug_rand_hflip) and repeated, with the remainder batch dropped;
  evaluation data is read once, in order, centre-cropped, with a final partial batch.

  Args:
    file_pattern: TFRecord glob (comma-separated globs allowed).
    is_training: training (augment, shuffle, repeat) or evaluation.
    global_batch_size: batch size over all replicas; the per-replica batch is
      input_context.get_per_replica_batch_size(global_batch_size).
    image_size: (height, width) of the model input.
    num_classes: labels must lie in [0, num_classes) (checked per record).
    input_context: tf.distribute input context, or None.
    shuffle_buffer_size: examples in the shuffle buffer (training).
    seed: optional shuffle seed.
    aug_rand_hflip: random horizontal flip (training only).
    dtype: image dtype ('float32', 'bfloat16' or 'float16').
    skip_corrupt_records: drop records that fail to read or decode (counted and
      logged by the pipeline) instead of stopping.
    crop_area_range: (min, max) fraction of the image area the training crop covers.

  Returns:
    tf.data.Dataset of (images, labels).

  Raises:
    ValueError: if file_pattern matches no file, or global_batch_size < 1.
  """
  module = model_garden.load('classification_input')
  decoder = module.Decoder(image_field_key=IMAGE_KEY, label_field_key=LABEL_KEY)
  size = [int(s) for s in image_size]
  if is_training:
    parser = module.Parser(
      output_size=size,
      num_classes=num_classes,
      decode_jpeg_only=False,  # PNG too; the JPEG-only path crops before decoding.
      aug_rand_hflip=aug_rand_hflip,
      aug_crop=True,
      crop_area_range=tuple(crop_area_range),
      dtype=dtype,
    )
    parse_train = parser.parse_fn(True)

    def parse(decoded):
      image, label = parse_train(decoded)
      return image, _checked_label(label, num_classes)

  else:

    def parse(decoded):
      image = preprocess_eval_image(decode_image(decoded[IMAGE_KEY]), size, dtype)
      return image, _checked_label(decoded[LABEL_KEY], num_classes)

  return retinanet_input.parsed_batches(
    file_pattern,
    is_training,
    global_batch_size,
    input_context,
    shuffle_buffer_size,
    seed,
    decoder.decode,
    parse,
    skip_corrupt_records=skip_corrupt_records,
  )

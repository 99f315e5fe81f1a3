"""Serving-time preprocessing as TF graph ops: decode, validate, normalize, resize, pad.

The image path is the RetinaNet eval parser's (`official.vision.dataloaders.
retinanet_input.Parser._parse_eval_data`) step for step, so a served model sees the
same input it was evaluated on:

  uint8 [H, W, 3] --preprocess_ops.normalize_image--> float32, (x/255 - MEAN_NORM) /
  STDDEV_NORM --preprocess_ops.resize_and_crop_image--> aspect-preserving bilinear
  resize into `input_image_size`, zero-padded at the bottom / right to `padded_size`
  (input size rounded up to a multiple of 2^max_level).

Bad requests fail with `tf.errors.InvalidArgumentError` raised by assertion ops in the
graph (never by Python), so a loaded model reports the problem and keeps answering the
next request. Encoded images are checked from their header *before* they are decoded:
an oversized image (a "decompression bomb") is refused without allocating its pixels.
"""

from typing import List, Sequence, Tuple

import tensorflow as tf

from official_spinenet import model_garden

# Refuse images with more pixels than this (height * width) unless the export says
# otherwise. 40 MP covers every consumer camera; the eval parser normalizes to float32
# *before* resizing, so one such image already costs ~480 MB of float pixels.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# PNG: 8-byte signature, then the IHDR chunk: length (4), type (4), width (4, big
# endian), height (4), ... so the size is at bytes 16..23 of any valid PNG.
_PNG_SIZE_OFFSET = 16
_PNG_MIN_HEADER_BYTES = 33  # signature + complete IHDR chunk (4 + 4 + 13 + 4)


def padded_size(input_image_size: Sequence[int], max_level: int) -> List[int]:
  """The model input size: `input_image_size` rounded up to a multiple of 2^max_level."""
  stride = 2**max_level
  return [-(-int(s) // stride) * stride for s in input_image_size]


def _assert(condition: tf.Tensor, template: str, values: Sequence[tf.Tensor]) -> tf.Operation:
  """An assertion op whose InvalidArgumentError message is `template` filled with values."""
  message = tf.strings.format(template, tuple(values)) if values else template
  return tf.debugging.Assert(condition, [message], summarize=1)


def check_image_size(
  height: tf.Tensor, width: tf.Tensor, max_image_pixels: int, what: str = 'image'
) -> List[tf.Operation]:
  """Assertion ops: the image is not zero-sized and has at most max_image_pixels pixels.

  Args:
    height, width: int scalars.
    max_image_pixels: the largest height * width accepted.
    what: names the input in the messages (e.g. 'image_bytes').

  Returns:
    The assertion ops; run them (control dependencies) before using the image.
  """
  height = tf.cast(height, tf.int64)
  width = tf.cast(width, tf.int64)
  return [
    _assert(
      tf.logical_and(height > 0, width > 0),
      f'{what}: the image is zero-sized ({{}}x{{}} pixels, height x width).',
      [height, width],
    ),
    _assert(
      height * width <= max_image_pixels,
      f'{what}: the image has {{}}x{{}} = {{}} pixels, more than max_image_pixels='
      f'{max_image_pixels}; send a smaller image or export with a larger '
      'max_image_pixels.',
      [height, width, height * width],
    ),
  ]


def _png_size(encoded: tf.Tensor, what: str) -> tf.Tensor:
  """[height, width] int32 read from a PNG's IHDR chunk (no decoding)."""
  long_enough = _assert(
    tf.strings.length(encoded) >= _PNG_MIN_HEADER_BYTES,
    f'{what}: truncated PNG ({{}} bytes, the header alone needs {_PNG_MIN_HEADER_BYTES}).',
    [tf.strings.length(encoded)],
  )
  with tf.control_dependencies([long_enough]):
    width_height = tf.io.decode_raw(
      tf.strings.substr(encoded, _PNG_SIZE_OFFSET, 8), tf.int32, little_endian=False
    )
  return tf.reshape(tf.reverse(width_height, [0]), [2])


def encoded_image_size(encoded: tf.Tensor, what: str = 'image') -> tf.Tensor:
  """[height, width] (int32) of a JPEG or PNG, read from its header without decoding.

  Fails (InvalidArgumentError) on empty bytes, bytes that are neither JPEG nor PNG,
  and a header too corrupt to read.

  Args:
    encoded: a scalar string, the file bytes.
    what: names the input in the messages.
  """
  not_empty = _assert(tf.strings.length(encoded) > 0, f'{what}: empty image bytes (0 bytes).', [])
  with tf.control_dependencies([not_empty]):
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(encoded, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
  known_format = _assert(
    tf.logical_or(is_jpeg, is_png),
    f'{what}: not a JPEG or PNG file ({{}} bytes, starting with {{}}); only JPEG and '
    'PNG are accepted.',
    [tf.strings.length(encoded), tf.strings.substr(encoded, 0, 8)],
  )
  with tf.control_dependencies([known_format]):
    # Only the taken branch runs, so the PNG parse never sees JPEG bytes.
    return tf.cond(
      is_jpeg, lambda: tf.io.extract_jpeg_shape(encoded)[:2], lambda: _png_size(encoded, what)
    )


def decode_image(
  encoded: tf.Tensor, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, what: str = 'image'
) -> tf.Tensor:
  """Decodes one JPEG or PNG to uint8 [H, W, 3] after validating its header.

  Grey and RGBA images become RGB (channels=3), as in Model Garden's TfExampleDecoder.
  Corrupt image data fails inside the decoder with its own InvalidArgumentError
  (e.g. 'Invalid PNG data', 'jpeg::Uncompress failed'), except JPEG scan data damaged
  after an intact header, which libjpeg decodes with artifacts (as PIL does).

  Args:
    encoded: a scalar string, the file bytes.
    max_image_pixels: refuse images with more pixels (checked before decoding).
    what: names the input in the messages.
  """
  size = encoded_image_size(encoded, what)
  with tf.control_dependencies(check_image_size(size[0], size[1], max_image_pixels, what)):
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def preprocess_image(
  image: tf.Tensor, input_image_size: Sequence[int], model_input_size: Sequence[int]
) -> Tuple[tf.Tensor, tf.Tensor]:
  """The eval parser's image steps: normalize, resize keeping aspect ratio, pad.

  Args:
    image: uint8 [H, W, 3].
    input_image_size: (height, width) the image is resized to fit into.
    model_input_size: (height, width) it is then padded to (see `padded_size`).

  Returns:
    (float32 [model_input_size..., 3], image_info float32 [4, 2]) where image_info is
    [[original h, w], [scaled h, w], [y scale, x scale], [y offset, x offset]].
  """
  preprocess_ops = model_garden.load('preprocess_ops')
  image = preprocess_ops.normalize_image(image)
  image, image_info = preprocess_ops.resize_and_crop_image(
    image,
    list(input_image_size),
    padded_size=list(model_input_size),
    aug_scale_min=1.0,
    aug_scale_max=1.0,
    keep_aspect_ratio=True,
  )
  return tf.ensure_shape(image, list(model_input_size) + [3]), image_info


def _map_preprocess(
  fn, elems: tf.Tensor, model_input_size: Sequence[int]
) -> Tuple[tf.Tensor, tf.Tensor]:
  """tf.map_fn of fn(elem) -> (image, image_info) over the batch."""
  return tf.map_fn(
    fn,
    elems,
    fn_output_signature=(
      tf.TensorSpec(list(model_input_size) + [3], tf.float32),
      tf.TensorSpec([4, 2], tf.float32),
    ),
  )


def preprocess_image_batch(
  images: tf.Tensor,
  input_image_size: Sequence[int],
  model_input_size: Sequence[int],
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
  what: str = 'images',
) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 [B, H, W, 3] (one size for the batch) -> ([B, Hm, Wm, 3], image_info [B, 4, 2])."""
  shape = tf.shape(images)
  with tf.control_dependencies(check_image_size(shape[1], shape[2], max_image_pixels, what)):
    images = tf.identity(images)
  return _map_preprocess(
    lambda image: preprocess_image(image, input_image_size, model_input_size),
    images,
    model_input_size,
  )


def preprocess_encoded_batch(
  encoded: tf.Tensor,
  input_image_size: Sequence[int],
  model_input_size: Sequence[int],
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
  what: str = 'image_bytes',
) -> Tuple[tf.Tensor, tf.Tensor]:
  """string [B] JPEG/PNG bytes, any sizes -> ([B, Hm, Wm, 3], image_info [B, 4, 2])."""
  return _map_preprocess(
    lambda data: preprocess_image(
      decode_image(data, max_image_pixels, what), input_image_size, model_input_size
    ),
    encoded,
    model_input_size,
  )


def encoded_images_from_examples(serialized: tf.Tensor) -> tf.Tensor:
  """string [B] serialized tf.Examples -> string [B] of their `image/encoded` bytes.

  The project's records (data/tfexample.py, the layout Model Garden's
  TfExampleDecoder reads) keep the JPEG/PNG file under `image/encoded`; the other
  features (boxes, ids) are not needed to predict. A missing image/encoded reads as
  empty bytes and fails with the empty-bytes message.
  """
  features = tf.io.parse_example(
    serialized, {'image/encoded': tf.io.FixedLenFeature([], tf.string, default_value='')}
  )
  return features['image/encoded']

"""Serving-time preprocessing as TF graph ops: decode, validate, normalize, resize, pad.

The image path is the RetinaNet eval parser's (`official.vision.dataloaders.
retinanet_input.Parser._parse_eval_data`) step for step, so a served model sees the
same input it was evaluated on:

  uint8 [H, W, 3] --preprocess_ops.normalize_image--> float32, (x/255 - MEAN_NORM) /
  STDDEV_NORM --resize_and_pad (preprocess_ops.resize_and_crop_image's arithmetic)-->
  aspect-preserving bilinear resize into `input_image_size`, zero-padded at the
  bottom / right to `padded_size` (input size rounded up to a multiple of 2^max_level).

One difference: Model Garden rounds a side that scales to under half a pixel down to 0
and the resize then fails; here each side keeps at least 1 pixel, so thin images
(1 x 1000) are served. Every other image gets the eval parser's pixels bit for bit.

Bad requests fail with `tf.errors.InvalidArgumentError` raised by assertion ops in the
graph (never by Python), so a loaded model reports the problem and keeps answering the
next request. Messages name the input and its index in the batch (`image_bytes[1]:
...`) and never carry its bytes; decoding and its checks are `image_decoding`'s.
"""

from typing import Callable, List, Sequence, Tuple

import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.serving import image_decoding

# Refuse images with more pixels than this (height * width) unless the export says
# otherwise. 40 MP covers every consumer camera; the eval parser normalizes to float32
# *before* resizing, so one such image already costs ~480 MB of float pixels.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# The string signature inputs element_decoder reads.
ENCODED_INPUTS = ('image_bytes', 'tf_examples')


def padded_size(input_image_size: Sequence[int], max_level: int) -> List[int]:
  """The model input size: `input_image_size` rounded up to a multiple of 2^max_level."""
  stride = 2**max_level
  return [-(-int(s) // stride) * stride for s in input_image_size]


def decode_image(
  encoded: tf.Tensor,
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
  what: image_decoding.Name = 'image',
) -> tf.Tensor:
  """One JPEG or PNG -> uint8 [H, W, 3] (image_decoding.decode_image, default pixel limit)."""
  return image_decoding.decode_image(encoded, max_image_pixels, what)


def element_decoder(
  input_name: str, max_image_pixels: int
) -> Callable[[tf.Tensor, image_decoding.Name], tf.Tensor]:
  """(element, its name) -> uint8 [H, W, 3] for a string signature input.

  Args:
    input_name: 'image_bytes' (a JPEG / PNG file) or 'tf_examples' (a serialized
      tf.Example holding the file in image/encoded).
    max_image_pixels: refuse larger images, before decoding.
  """
  if input_name == 'image_bytes':
    return lambda data, name: image_decoding.decode_image(data, max_image_pixels, name)
  if input_name == 'tf_examples':
    return lambda data, name: image_decoding.decode_image(
      image_decoding.example_image_bytes(data, name),
      max_image_pixels,
      tf.strings.join([name, ' image/encoded']),
    )
  raise ValueError(f'input_name must be one of {ENCODED_INPUTS}, got {input_name!r}.')


def resize_and_pad(
  image: tf.Tensor, input_image_size: Sequence[int], model_input_size: Sequence[int]
) -> Tuple[tf.Tensor, tf.Tensor]:
  """Model Garden's resize_and_crop_image (no jitter, keep aspect ratio), sides >= 1 pixel.

  Args:
    image: [H, W, C], float.
    input_image_size: (height, width) the image is resized to fit into.
    model_input_size: (height, width) it is then zero-padded to, at the bottom / right.

  Returns:
    (float32 [model_input_size..., C], image_info float32 [4, 2]): [[original h, w],
    [input_image_size h, w], [y scale, x scale], [0, 0]], as Model Garden's.
  """
  image_size = tf.cast(tf.shape(image)[0:2], tf.float32)
  desired_size = tf.cast(list(input_image_size), tf.float32)
  scale = tf.minimum(desired_size[0] / image_size[0], desired_size[1] / image_size[1])
  # Model Garden's tf.round alone gives 0 for a side under half a pixel (1 x 1000 into
  # 128 x 128), and the resize fails: keep one pixel.
  scaled_size = tf.maximum(tf.round(image_size * scale), 1.0)
  image_scale = scaled_size / image_size
  scaled_image = tf.image.resize(
    image, tf.cast(scaled_size, tf.int32), method=tf.image.ResizeMethod.BILINEAR
  )
  output_image = tf.image.pad_to_bounding_box(
    scaled_image, 0, 0, model_input_size[0], model_input_size[1]
  )
  image_info = tf.stack([image_size, desired_size, image_scale, tf.zeros([2], tf.float32)])
  return output_image, image_info


def preprocess_image(
  image: tf.Tensor, input_image_size: Sequence[int], model_input_size: Sequence[int]
) -> Tuple[tf.Tensor, tf.Tensor]:
  """The eval parser's image steps: normalize, resize keeping aspect ratio, pad.

  Args:
    image: uint8 [H, W, 3].
    input_image_size: (height, width) the image is resized to fit into.
    model_input_size: (height, width) it is then padded to (see `padded_size`).

  Returns:
    (float32 [model_input_size..., 3], image_info float32 [4, 2]) (see resize_and_pad).
  """
  preprocess_ops = model_garden.load('preprocess_ops')
  image = preprocess_ops.normalize_image(image)
  image, image_info = resize_and_pad(image, input_image_size, model_input_size)
  return tf.ensure_shape(image, list(model_input_size) + [3]), image_info


def checked_batch(elems: tf.Tensor, what: str) -> tf.Tensor:
  """elems after checks: a batch of the signature input's shape, not empty.

  Neither a loaded SavedModel nor TF Serving checks a fed tensor against the
  signature's shape, and an assertion on its rank would be folded to true from the
  static shape: EnsureShape checks it at run time ("Shape of tensor images [8,8,3] is
  not compatible with expected shape [?,?,?,3]").

  Args:
    elems: string [B] ('image_bytes', 'tf_examples') or uint8 [B, H, W, 3] ('images').
    what: the signature's input name.
  """
  elems = tf.ensure_shape(elems, [None, None, None, 3] if what == 'images' else [None])
  not_empty = image_decoding.assert_that(
    tf.shape(elems)[0] > 0, what, 'empty batch (0 images); send at least one image'
  )
  with tf.control_dependencies([not_empty]):
    return tf.identity(elems)


def checked_images(images: tf.Tensor, max_image_pixels: int, what: str = 'images') -> tf.Tensor:
  """uint8 [B, H, W, 3] after checks: shape, batch not empty, size of the images."""
  images = checked_batch(images, what)
  shape = tf.shape(images)
  checks = image_decoding.check_image_size(shape[1], shape[2], max_image_pixels, what)
  with tf.control_dependencies(checks):
    return tf.identity(images)


def map_images(fn, elems: tf.Tensor, what: str, fn_output_signature):
  """tf.map_fn of fn(element, name) over a batch; name is 'what[i]'.

  Args:
    fn: (element, string scalar naming it, e.g. 'image_bytes[2]') -> outputs.
    elems: the batch [B, ...] (checked_batch'ed).
    what: the input's name.
    fn_output_signature: as tf.map_fn's.

  Returns:
    fn's outputs stacked over the batch.
  """
  indices = tf.range(tf.shape(elems)[0])
  return tf.map_fn(
    lambda pair: fn(pair[1], image_decoding.input_name(what, pair[0])),
    (indices, elems),
    fn_output_signature=fn_output_signature,
  )


def _preprocessed_spec(model_input_size: Sequence[int]):
  return (
    tf.TensorSpec(list(model_input_size) + [3], tf.float32),
    tf.TensorSpec([4, 2], tf.float32),
  )


def preprocess_image_batch(
  images: tf.Tensor,
  input_image_size: Sequence[int],
  model_input_size: Sequence[int],
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
  what: str = 'images',
) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 [B, H, W, 3] (one size for the batch) -> ([B, Hm, Wm, 3], image_info [B, 4, 2])."""
  return map_images(
    lambda image, _: preprocess_image(image, input_image_size, model_input_size),
    checked_images(images, max_image_pixels, what),
    what,
    _preprocessed_spec(model_input_size),
  )


def preprocess_encoded_batch(
  encoded: tf.Tensor,
  input_image_size: Sequence[int],
  model_input_size: Sequence[int],
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
  what: str = 'image_bytes',
) -> Tuple[tf.Tensor, tf.Tensor]:
  """string [B] -> ([B, Hm, Wm, 3], image_info [B, 4, 2]); images of any sizes.

  Args:
    encoded: JPEG / PNG files (what='image_bytes') or serialized tf.Examples holding
      one in image/encoded (what='tf_examples'); see element_decoder.
    input_image_size, model_input_size: see preprocess_image.
    max_image_pixels: refuse larger images, before decoding.
    what: the signature's input name, which also names the elements in messages.
  """
  decode = element_decoder(what, max_image_pixels)
  return map_images(
    lambda data, name: preprocess_image(decode(data, name), input_image_size, model_input_size),
    checked_batch(encoded, what),
    what,
    _preprocessed_spec(model_input_size),
  )

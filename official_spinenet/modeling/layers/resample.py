"""Cross-scale resampling (SpineNet Sec. 3.2, Fig. 3).

A parent block feeds a target block of another level and width. SpineNet first
narrows the parent to alpha times its block width with a 1x1 conv (alpha = 0.5 or 1),
then changes resolution (nearest-neighbour upsampling, or a stride-2 3x3 conv followed
by stride-2 max pools for larger factors), then matches the target width with a 1x1
conv and BN without activation, so that parents can be summed.

Sizes follow 'same' padding: a level-l map of a W-pixel image is ceil(W / 2^l) wide.
Stride-2 steps always land on the target's size, but upsampling by an integer factor
does not when W is not a multiple of 2^max_level (224: level 6 is 4 wide, level 5 is
7); there the parent is resized to the target's size with nearest neighbours instead,
as the TPU SpineNet codebase does. Where the sizes divide, upsampling stays the exact
integer-factor repeat (equal to tf-models-official's).
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import blocks
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import graph_layout


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class NearestUpsampling(tf_keras.layers.Layer):
  """Nearest-neighbour upsampling by an integer factor.

  Input [B, H, W, C]; output [B, H * scale, W * scale, C]. Implemented by reshape and
  broadcast, which is exact and faster on CPU and TPU than a general resize.
  """

  def __init__(self, scale: int, **kwargs):
    super().__init__(**kwargs)
    if int(scale) != scale or scale < 1:
      raise ValueError(f'NearestUpsampling scale must be a positive integer, got {scale}.')
    self._scale = int(scale)

  def call(self, inputs):
    s = self._scale
    shape = tf.shape(inputs)
    b, h, w = shape[0], shape[1], shape[2]
    c = inputs.shape[-1]
    x = tf.reshape(inputs, [b, h, 1, w, 1, c])
    x = tf.broadcast_to(x, [b, h, s, w, s, c])
    return tf.reshape(x, [b, h * s, w * s, c])

  def compute_output_shape(self, input_shape):
    b, h, w, c = input_shape
    return tf.TensorShape(
      [b, None if h is None else h * self._scale, None if w is None else w * self._scale, c]
    )

  def get_config(self):
    return {**super().get_config(), 'scale': self._scale}


def resize_nearest(inputs: tf.Tensor, size) -> tf.Tensor:
  """Nearest-neighbour resize of [B, H, W, C] to [B, size[0], size[1], C], dtype kept.

  For an integer factor this equals `NearestUpsampling` exactly (each source pixel
  repeated); for other ratios it picks the nearest source pixel (half-pixel centres).
  """
  return tf.cast(
    tf.image.resize(inputs, size, method=tf.image.ResizeMethod.NEAREST_NEIGHBOR), inputs.dtype
  )


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class NearestResize(tf_keras.layers.Layer):
  """Nearest-neighbour resize to a fixed size: [B, H, W, C] -> [B, size[0], size[1], C]."""

  def __init__(self, size: Sequence[int], **kwargs):
    super().__init__(**kwargs)
    size = tuple(size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
      raise ValueError(f'NearestResize size must be two positive ints, got {size}.')
    self._size = size

  def call(self, inputs):
    return resize_nearest(inputs, self._size)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape([input_shape[0], *self._size, input_shape[-1]])

  def get_config(self):
    return {**super().get_config(), 'size': list(self._size)}


# (height, width) of a feature map; the height is None where the input's is dynamic.
Size = Tuple[Optional[int], int]


def upsample(x: tf.Tensor, input_size: Size, target_size: Size) -> tf.Tensor:
  """Nearest upsampling of a functional-graph tensor to the target block's size.

  Args:
    x: [B, H_in, W_in, C].
    input_size: (H_in, W_in); the width may be nominal (dynamic input).
    target_size: (H_t, W_t), larger.

  Returns:
    [B, H_t, W_t, C]: the integer-factor repeat where the sizes divide, else a
    resize to (H_t, W_t); either way as deep as the published checkpoints' graph.

  Raises:
    ValueError: sizes that do not divide with an unknown height.
  """
  (in_height, in_width), (height, width) = input_size, target_size
  scale = width // in_width
  heights_divide = in_height is None or height is None or height == in_height * scale
  if width == in_width * scale and heights_divide:
    x = NearestUpsampling(scale)(x)
  elif in_height is None or height is None:
    raise ValueError(
      f'Cannot upsample width {in_width} to {width} by an integer factor and the height '
      'is dynamic; give the input height and width, or neither.'
    )
  else:
    x = NearestResize((height, width))(x)
  return graph_layout.pad_depth(x, graph_layout.UPSAMPLING_DEPTH - 1)


def resample_with_alpha(
  inputs: tf.Tensor,
  input_width: int,
  input_block_fn: str,
  target_width: int,
  target_filters: int,
  target_block_fn: str,
  alpha: float,
  factory: conv_norm_act.LayerFactory,
  input_height: Optional[int] = None,
  target_height: Optional[int] = None,
) -> tf.Tensor:
  """Resamples a parent block's output for a target block.

  Args:
    inputs: functional-graph tensor [B, H_in, W_in, C_in].
    input_width: the parent's spatial width (decides up- or downsampling).
    input_block_fn: the parent's block type; a bottleneck's block width is C_in / 4.
    target_width: the target block's spatial width.
    target_filters: the target block's width (before bottleneck expansion).
    target_block_fn: the target block's type.
    alpha: resampling factor: the intermediate width is alpha x the parent's width.
    factory: conv/norm/activation settings.
    input_height: the parent's spatial height (None: dynamic).
    target_height: the target block's spatial height (None: dynamic).

  Returns:
    [B, H_t, W_t, block_output_filters(target_block_fn, target_filters)], after BN
    and without activation.
  """
  in_filters = inputs.shape[-1]
  if input_block_fn == 'bottleneck':
    in_filters /= blocks.BOTTLENECK_EXPANSION
  mid_filters = int(in_filters * alpha)
  x = factory.conv_norm_act(inputs, mid_filters, 1)
  if input_width > target_width:
    # A learned stride-2 conv, then parameter-free max pools for larger factors.
    x = factory.conv_norm_act(x, mid_filters, 3, strides=2)
    width = input_width / 2
    while width > target_width:
      x = tf_keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')(x)
      width /= 2
  elif input_width < target_width:
    x = upsample(x, (input_height, input_width), (target_height, target_width))
  out_filters = blocks.block_output_filters(target_block_fn, target_filters)
  return factory.conv_norm_act(x, out_filters, 1, use_activation=False)

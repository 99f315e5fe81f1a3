"""Cross-scale resampling (SpineNet Sec. 3.2, Fig. 3).

A parent block feeds a target block of another level and width. SpineNet first
narrows the parent to alpha times its block width with a 1x1 conv (alpha = 0.5 or 1),
then changes resolution (nearest-neighbour upsampling, or a stride-2 3x3 conv followed
by stride-2 max pools for larger factors), then matches the target width with a 1x1
conv and BN without activation, so that parents can be summed.
"""

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


def resample_with_alpha(
  inputs: tf.Tensor,
  input_width: int,
  input_block_fn: str,
  target_width: int,
  target_filters: int,
  target_block_fn: str,
  alpha: float,
  factory: conv_norm_act.LayerFactory,
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
    x = NearestUpsampling(target_width // input_width)(x)
    x = graph_layout.pad_depth(x, graph_layout.UPSAMPLING_DEPTH - 1)
  out_filters = blocks.block_output_filters(target_block_fn, target_filters)
  return factory.conv_norm_act(x, out_filters, 1, use_activation=False)

"""Cross-scale resampling of SpineNet-Mobile (Du et al., 2020, Sec. 3).

SpineNet-Mobile resamples parents more cheaply than SpineNet (whose 1x1 alpha
narrowing and full 3x3 convs are in `resample.py`): no alpha conv; downsampling by
2^k is k rounds of {depthwise 3x3 stride 2, BN, activation}; upsampling is
nearest-neighbour; a final 1x1 conv and BN (no activation) match the target width.
"""

import tensorflow as tf

from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import graph_layout
from official_spinenet.modeling.layers.resample import NearestUpsampling


def resample_depthwise(
  inputs: tf.Tensor,
  input_width: int,
  target_width: int,
  target_filters: int,
  factory: conv_norm_act.LayerFactory,
) -> tf.Tensor:
  """Resamples a parent's output to a target block's resolution and width.

  Args:
    inputs: functional-graph tensor [B, H_in, W_in, C_in].
    input_width: the parent's (nominal) spatial width.
    target_width: the target block's (nominal) spatial width; the ratio to
      input_width must be a power of two.
    target_filters: channels of the result.
    factory: conv/norm/activation settings.

  Returns:
    [B, H_t, W_t, target_filters] after BN, without activation.
  """
  x = inputs
  if input_width > target_width:
    width = input_width
    while width > target_width:
      x = factory.depthwise_conv(3, strides=2)(x)
      x = factory.norm()(x)
      x = factory.activation_layer()(x)
      width = -(-width // 2)
  elif input_width < target_width:
    if target_width % input_width:
      raise ValueError(
        f'Cannot upsample width {input_width} to {target_width}: not an integer factor.'
      )
    x = NearestUpsampling(target_width // input_width)(x)
    # The published checkpoints' upsampling is 5 ops deep; keep weight layer order.
    x = graph_layout.pad_depth(x, graph_layout.UPSAMPLING_DEPTH - 1)
  return factory.conv_norm_act(x, target_filters, 1, use_activation=False)

"""Cross-scale resampling of SpineNet-Mobile (Du et al., 2020, Sec. 3).

SpineNet-Mobile resamples parents more cheaply than SpineNet (whose 1x1 alpha
narrowing and full 3x3 convs are in `resample.py`): no alpha conv; downsampling by
2^k is k rounds of {depthwise 3x3 stride 2, BN, activation}; upsampling is
nearest-neighbour (a size-matching resize where the sizes do not divide, see
`resample.upsample`); a final 1x1 conv and BN (no activation) match the target width.
"""

from typing import Optional

import tensorflow as tf

from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import resample


def resample_depthwise(
  inputs: tf.Tensor,
  input_width: int,
  target_width: int,
  target_filters: int,
  factory: conv_norm_act.LayerFactory,
  input_height: Optional[int] = None,
  target_height: Optional[int] = None,
) -> tf.Tensor:
  """Resamples a parent's output to a target block's resolution and width.

  Args:
    inputs: functional-graph tensor [B, H_in, W_in, C_in].
    input_width: the parent's (nominal) spatial width.
    target_width: the target block's (nominal) spatial width.
    target_filters: channels of the result.
    factory: conv/norm/activation settings.
    input_height: the parent's spatial height (None: dynamic).
    target_height: the target block's spatial height (None: dynamic).

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
    x = resample.upsample(x, (input_height, input_width), (target_height, target_width))
  return factory.conv_norm_act(x, target_filters, 1, use_activation=False)

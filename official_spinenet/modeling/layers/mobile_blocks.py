"""Mobile building blocks: squeeze-excitation and the inverted bottleneck (MBConv).

SpineNet-Mobile (Du et al., "Efficient Scale-Permuted Backbone with Learned Resource
Distribution", 2020) builds every block as a MobileNetV2 inverted bottleneck
(Sandler et al., 2018) with a MobileNetV3-style squeeze-excitation (Hu et al., 2018;
Howard et al., 2019) gated by a hard sigmoid:

  1x1 expand (in_filters * expand_ratio), BN, act   (skipped when expand_ratio == 1)
  kxk depthwise (stride), BN, act
  SE: global mean -> 1x1 conv + bias (in_filters * se_ratio) -> relu
      -> 1x1 conv + bias (expanded width) -> gate -> multiply
  1x1 project (out_filters), BN                     (linear bottleneck)
  + input, after stochastic depth, when in_filters == out_filters and stride 1.

Sub-layer attribute names (`_conv0`, `_norm0`, `_conv1`, `_norm1`,
`_squeeze_excitation` with `_se_reduce` / `_se_expand`, `_conv2`, `_norm2`) are part
of the checkpoint format: they equal those of the published TF2 SpineNet-Mobile
checkpoints, so those restore without renaming.
"""

from typing import Optional

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import constructor_config
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import stochastic_depth


def make_divisible(
  value: float, divisor: int = 1, min_value: Optional[int] = None, round_down_protect: bool = True
) -> int:
  """Rounds `value` to the nearest multiple of `divisor` (MobileNet channel rounding).

  The result is at least `min_value` (default: `divisor`); with `round_down_protect`
  it is bumped by one `divisor` if rounding lost more than 10% of `value`. With
  divisor 1 (SpineNet-Mobile) this is round-half-up to an integer.
  """
  if divisor < 1:
    raise ValueError(f'divisor must be >= 1, got {divisor}.')
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if round_down_protect and rounded < 0.9 * value:
    rounded += divisor
  return int(rounded)


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class SqueezeExcitation(constructor_config.ConstructorConfig, tf_keras.layers.Layer):
  """Channel gating by global context (Hu et al., 2018).

  Input [B, H, W, out_filters]; output the input times a per-example, per-channel
  gate in [0, 1] computed from its spatial mean through a bottleneck of
  make_divisible(max(1, int(in_filters * se_ratio)), divisible_by) channels.
  """

  CONFIG_INCLUDES_BASE = True

  def __init__(
    self,
    in_filters: int,
    out_filters: int,
    se_ratio: float,
    divisible_by: int = 1,
    round_down_protect: bool = True,
    activation: str = 'relu',
    gating_activation: str = 'hard_sigmoid',
    kernel_initializer='VarianceScaling',
    kernel_regularizer=None,
    bias_regularizer=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    if not 0.0 < se_ratio <= 1.0:
      raise ValueError(f'se_ratio must be in (0, 1], got {se_ratio}.')
    self._store_config(locals())
    # SE's convs have no BN: only the activation and conv settings apply.
    self._factory = conv_norm_act.LayerFactory.from_arguments(locals())
    self._activation_fn = self._factory.activation_fn()
    self._gating_activation_fn = self._factory.activation_fn(gating_activation)

  @property
  def num_reduced_filters(self) -> int:
    c = self._config_dict
    return make_divisible(
      max(1, int(c['in_filters'] * c['se_ratio'])),
      c['divisible_by'],
      round_down_protect=c['round_down_protect'],
    )

  def build(self, input_shape):
    out_filters = self._config_dict['out_filters']
    if input_shape[-1] != out_filters:
      raise ValueError(
        f'SqueezeExcitation expects {out_filters} input channels, got {input_shape[-1]}.'
      )
    self._se_reduce = self._factory.conv(self.num_reduced_filters, 1, use_bias=True)
    self._se_expand = self._factory.conv(out_filters, 1, use_bias=True)
    super().build(input_shape)

  def call(self, inputs):
    x = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
    x = self._activation_fn(self._se_reduce(x))
    x = self._gating_activation_fn(self._se_expand(x))
    return x * inputs


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class InvertedBottleneckBlock(constructor_config.ConstructorConfig, tf_keras.layers.Layer):
  """Inverted bottleneck (MBConv) with optional squeeze-excitation.

  Input [B, H, W, in_filters]; output [B, ceil(H/strides), ceil(W/strides),
  out_filters]. The residual connection exists only when in_filters == out_filters,
  strides == 1 and use_residual.
  """

  CONFIG_INCLUDES_BASE = True

  def __init__(
    self,
    in_filters: int,
    out_filters: int,
    expand_ratio: float = 6,
    strides: int = 1,
    kernel_size: int = 3,
    se_ratio: Optional[float] = None,
    se_inner_activation: str = 'relu',
    se_gating_activation: str = 'hard_sigmoid',
    divisible_by: int = 1,
    stochastic_depth_drop_rate: Optional[float] = None,
    use_residual: bool = True,
    regularize_depthwise: bool = False,
    kernel_initializer='VarianceScaling',
    kernel_regularizer=None,
    bias_regularizer=None,
    activation: str = 'relu',
    use_sync_bn: bool = False,
    norm_momentum: float = 0.99,
    norm_epsilon: float = 0.001,
    **kwargs,
  ):
    """Initializes the block.

    Args:
      in_filters: channels of the input.
      out_filters: channels of the output.
      expand_ratio: expanded width = make_divisible(in_filters * expand_ratio,
        divisible_by); 1 skips the expansion conv.
      strides: stride of the depthwise conv.
      kernel_size: depthwise kernel size.
      se_ratio: squeeze-excitation bottleneck = in_filters * se_ratio; None or 0
        turns SE off.
      se_inner_activation: activation inside SE.
      se_gating_activation: SE gate (SpineNet-Mobile: hard sigmoid).
      divisible_by: channel rounding of the expanded and SE widths.
      stochastic_depth_drop_rate: drop rate of the residual branch, or None.
      use_residual: whether to add the input when the shapes allow it.
      regularize_depthwise: whether kernel_regularizer also applies to the
        depthwise kernel.
      kernel_initializer: conv kernel initializer.
      kernel_regularizer: conv kernel regularizer.
      bias_regularizer: conv bias regularizer (SE convs).
      activation: activation after the expansion and depthwise convs.
      use_sync_bn: synchronise BN statistics across replicas.
      norm_momentum: BN momentum.
      norm_epsilon: BN epsilon.
      **kwargs: passed to tf_keras.layers.Layer.
    """
    super().__init__(**kwargs)
    if strides < 1:
      raise ValueError(f'strides must be >= 1, got {strides}.')
    if expand_ratio < 1:
      raise ValueError(f'expand_ratio must be >= 1, got {expand_ratio}.')
    self._store_config(locals())
    self._factory = conv_norm_act.LayerFactory.from_arguments(locals())

  @property
  def expanded_filters(self) -> int:
    c = self._config_dict
    return make_divisible(c['in_filters'] * c['expand_ratio'], c['divisible_by'])

  @property
  def has_residual(self) -> bool:
    c = self._config_dict
    return c['use_residual'] and c['in_filters'] == c['out_filters'] and c['strides'] == 1

  @property
  def has_squeeze_excitation(self) -> bool:
    se_ratio = self._config_dict['se_ratio']
    return bool(se_ratio) and 0.0 < se_ratio <= 1.0

  def build(self, input_shape):
    c = self._config_dict
    if input_shape[-1] != c['in_filters']:
      raise ValueError(
        f'InvertedBottleneckBlock expects {c["in_filters"]} input channels, got {input_shape[-1]}.'
      )
    f = self._factory
    expanded = self.expanded_filters
    # Attribute order = weight order; it equals the reference's, so that
    # `set_weights(reference.get_weights())` and checkpoints line up.
    if c['expand_ratio'] > 1:
      self._conv0 = f.conv(expanded, 1)
      self._norm0 = f.norm()
    self._activation_layer = f.activation_layer()
    self._conv1 = f.depthwise_conv(
      c['kernel_size'], c['strides'], regularize=c['regularize_depthwise']
    )
    self._norm1 = f.norm()
    self._depthwise_activation_layer = f.activation_layer()
    self._squeeze_excitation = None
    if self.has_squeeze_excitation:
      self._squeeze_excitation = SqueezeExcitation(
        in_filters=c['in_filters'],
        out_filters=expanded,
        se_ratio=c['se_ratio'],
        divisible_by=c['divisible_by'],
        activation=c['se_inner_activation'],
        gating_activation=c['se_gating_activation'],
        kernel_initializer=conv_norm_act.clone_initializer(f.kernel_initializer),
        kernel_regularizer=f.kernel_regularizer,
        bias_regularizer=f.bias_regularizer,
      )
    self._conv2 = f.conv(c['out_filters'], 1)
    self._norm2 = f.norm()
    drop_rate = c['stochastic_depth_drop_rate']
    self._stochastic_depth = stochastic_depth.StochasticDepth(drop_rate) if drop_rate else None
    self._add = tf_keras.layers.Add()
    super().build(input_shape)

  def call(self, inputs, training=None):
    x = inputs
    if self._config_dict['expand_ratio'] > 1:
      x = self._activation_layer(self._norm0(self._conv0(x), training=training))
    x = self._depthwise_activation_layer(self._norm1(self._conv1(x), training=training))
    if self._squeeze_excitation is not None:
      x = self._squeeze_excitation(x)
    x = self._norm2(self._conv2(x), training=training)
    if self.has_residual:
      if self._stochastic_depth is not None:
        x = self._stochastic_depth(x, training=training)
      x = self._add([x, inputs])
    return x

  def compute_output_shape(self, input_shape):
    b, h, w, _ = tf.TensorShape(input_shape).as_list()
    s = self._config_dict['strides']
    return tf.TensorShape(
      [
        b,
        None if h is None else -(-h // s),
        None if w is None else -(-w // s),
        self._config_dict['out_filters'],
      ]
    )

"""Residual building blocks of SpineNet (Sec. 3 of the SpineNet paper).

Both blocks follow ResNet (He et al., 2016) with BN after every conv and no conv bias;
stochastic depth, when on, drops the residual branch before the addition. DropBlock,
when on (SpineNet protocol A), follows every BN (and its activation), the projection
shortcut's included, as in the TPU SpineNet implementation; it has no weights, so
the checkpoint layout is the same with and without it. Sub-layer
attribute names (`_shortcut`, `_norm0`, `_conv1`, ...) are part of the checkpoint
format and match the layout of the published TF2 SpineNet checkpoints, so those
restore without renaming.
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import constructor_config
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import dropblock
from official_spinenet.modeling.layers import graph_layout
from official_spinenet.modeling.layers import stochastic_depth

BOTTLENECK_EXPANSION = 4


class _ResidualBase(constructor_config.ConstructorConfig, tf_keras.layers.Layer):
  """Shared constructor, config and shortcut of the residual blocks."""

  CONFIG_INCLUDES_BASE = True

  def __init__(
    self,
    filters: int,
    strides: int = 1,
    use_projection: bool = False,
    stochastic_depth_drop_rate: Optional[float] = None,
    kernel_initializer='VarianceScaling',
    kernel_regularizer=None,
    bias_regularizer=None,
    activation: str = 'relu',
    use_sync_bn: bool = False,
    norm_momentum: float = 0.99,
    norm_epsilon: float = 0.001,
    dropblock_drop_rate: Optional[float] = None,
    dropblock_size: int = 3,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self._store_config(locals())
    self._filters = filters
    self._strides = strides
    self._use_projection = use_projection
    self._dropblock_drop_rate = dropblock_drop_rate
    self._factory = conv_norm_act.LayerFactory.from_arguments(locals())
    self._activation_fn = self._factory.activation_fn()

  @property
  def output_filters(self) -> int:
    raise NotImplementedError

  def _conv_shapes(self) -> Sequence[Tuple[int, int, int]]:
    """(filters, kernel size, strides) of the residual branch's convs, in order."""
    raise NotImplementedError

  def build(self, input_shape):
    f = self._factory
    if self._use_projection:
      self._shortcut = f.conv(self.output_filters, 1, self._strides)
      self._norm0 = f.norm()
    drop_rate = self._config_dict['stochastic_depth_drop_rate']
    self._stochastic_depth = stochastic_depth.StochasticDepth(drop_rate) if drop_rate else None
    # Built only when on: no new checkpoint object when off.
    if self._dropblock_drop_rate:
      self._dropblock = dropblock.DropBlock(
        self._dropblock_drop_rate, self._config_dict['dropblock_size']
      )
    # `_conv1`, `_norm1`, `_conv2`, ...: the checkpoints' names, in their order.
    for i, (filters, kernel_size, strides) in enumerate(self._conv_shapes(), 1):
      setattr(self, f'_conv{i}', f.conv(filters, kernel_size, strides))
      setattr(self, f'_norm{i}', f.norm())
    super().build(input_shape)

  def _drop(self, x, training):
    """DropBlock after a BN (and its activation), if configured."""
    if not self._dropblock_drop_rate:
      return x
    return self._dropblock(x, training=training)

  def call(self, inputs, training=None):
    """conv -> BN [-> activation] per conv (none after the last), then the shortcut."""
    x = inputs
    num_convs = len(self._conv_shapes())
    for i in range(1, num_convs + 1):
      x = getattr(self, f'_norm{i}')(getattr(self, f'_conv{i}')(x), training=training)
      if i < num_convs:
        x = self._activation_fn(x)
      x = self._drop(x, training)
    shortcut = inputs
    if self._use_projection:
      shortcut = self._drop(self._norm0(self._shortcut(inputs), training=training), training)
    if self._stochastic_depth is not None:
      x = self._stochastic_depth(x, training=training)
    return self._activation_fn(x + shortcut)


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class BottleneckBlock(_ResidualBase):
  """1x1 (filters) -> 3x3 (filters, stride) -> 1x1 (4 x filters), plus shortcut.

  Input [B, H, W, C]; output [B, H/stride, W/stride, 4 * filters].
  """

  @property
  def output_filters(self) -> int:
    return self._filters * BOTTLENECK_EXPANSION

  def _conv_shapes(self):
    return ((self._filters, 1, 1), (self._filters, 3, self._strides), (self.output_filters, 1, 1))


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class ResidualBlock(_ResidualBase):
  """3x3 (filters, stride) -> 3x3 (filters), plus shortcut.

  Input [B, H, W, C]; output [B, H/stride, W/stride, filters].
  """

  @property
  def output_filters(self) -> int:
    return self._filters

  def _conv_shapes(self):
    return ((self._filters, 3, self._strides), (self._filters, 3, 1))


RESIDUAL_BLOCKS = {'bottleneck': BottleneckBlock, 'residual': ResidualBlock}


def block_output_filters(block_fn: str, filters: int) -> int:
  """Channels a block of type `block_fn` and width `filters` outputs."""
  return filters * BOTTLENECK_EXPANSION if block_fn == 'bottleneck' else filters


def block_group(
  inputs: tf.Tensor,
  block_fn: str,
  filters: int,
  block_repeats: int,
  strides: int = 1,
  stochastic_depth_drop_rate: Optional[float] = None,
  **block_kwargs,
) -> tf.Tensor:
  """Block repeat (SpineNet Sec. 4.1): `block_repeats` blocks in sequence.

  SpineNet-96/143/190 deepen SpineNet-49 by repeating every block 2/3/4 times. The
  first block projects the shortcut when the width or the stride changes; the rest
  keep stride 1 and identity shortcuts. All share one drop rate.

  Args:
    inputs: functional-graph tensor [B, H, W, C].
    block_fn: 'bottleneck' or 'residual'.
    filters: block width.
    block_repeats: number of blocks (>= 1).
    strides: stride of the first block.
    stochastic_depth_drop_rate: drop rate of every block, or None.
    **block_kwargs: LayerFactory settings (activation, norm, initializers).

  Returns:
    [B, H/strides, W/strides, block_output_filters(block_fn, filters)].
  """
  if block_repeats < 1:
    raise ValueError(f'block_repeats must be >= 1, got {block_repeats}.')
  block_cls = RESIDUAL_BLOCKS[block_fn]
  use_projection = not (
    inputs.shape[-1] == block_output_filters(block_fn, filters) and strides == 1
  )
  x = inputs
  for i in range(block_repeats):
    x = block_cls(
      filters=filters,
      strides=strides if i == 0 else 1,
      use_projection=use_projection if i == 0 else False,
      stochastic_depth_drop_rate=stochastic_depth_drop_rate,
      **block_kwargs,
    )(x)
  return graph_layout.pad_depth(x, graph_layout.BLOCK_GROUP_END_DEPTH)

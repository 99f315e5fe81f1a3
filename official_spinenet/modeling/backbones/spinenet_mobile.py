"""SpineNet-Mobile: the scale-permuted backbone built from inverted bottlenecks.

Xianzhi Du, Tsung-Yi Lin, Pengchong Jin, Yin Cui, Mingxing Tan, Quoc Le, Xiaodan
Song. Efficient Scale-Permuted Backbone with Learned Resource Distribution. ECCV 2020.
https://arxiv.org/abs/2010.11426

The SpineNet-49 permutation with one more level-2 block, every block a MobileNetV3
style inverted bottleneck with squeeze-excitation (hard-sigmoid gate). The stem is a
3x3/2 conv and two inverted bottlenecks (level 1, then level 2 with stride 2); the
cross-scale connections resample with depthwise convs and nearest upsampling
(`layers/mobile_resample.py`); widths follow SPINENET_MOBILE_FILTER_SIZE_MAP times
`filter_size_scale`. One 1x1 conv, BN and activation per level make the endpoints.
The walk over the specs is `scale_permuted.ScalePermutedBackbone`'s.
"""

from typing import List, Optional

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import scale_permuted
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.layers import graph_layout
from official_spinenet.modeling.layers import mobile_blocks
from official_spinenet.modeling.layers import mobile_resample

NUM_STEM_BLOCKS = 2
STEM_LEVELS = (1, 2)
STEM_STRIDES = (1, 2)
# The SE gate of the published SpineNet-Mobile models: relu6(x + 3) * 0.16667, the
# constant tf-models-official trains with (a 2e-5 relative difference to 1/6).
SE_GATING_ACTIVATION = 'hard_sigmoid_rounded'


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class SpineNetMobile(scale_permuted.ScalePermutedBackbone):
  """SpineNet-Mobile backbone as a functional Keras model.

  Input: images [B, H, W, 3]; static H and W of any size >= 2^max(max_level, block
  levels) (128 for the published specs; e.g. 224), dynamic ones multiples of it
  (see ScalePermutedBackbone).
  Output: dict str(level) -> [B, ceil(H / 2^level), ceil(W / 2^level),
  endpoints_num_filters] for level in [min_level, max_level].
  """

  NAME = 'SpineNetMobile'
  DEFAULT_BLOCK_SPECS = spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS
  FILTER_SIZE_MAP = spinenet_specs.SPINENET_MOBILE_FILTER_SIZE_MAP
  BLOCK_FNS = (spinenet_specs.MBCONV,)
  STEM_BLOCKS = tuple((level, spinenet_specs.MBCONV) for level in STEM_LEVELS)

  def __init__(
    self,
    input_specs: scale_permuted.InputSpecLike = None,
    min_level: int = 3,
    max_level: int = 7,
    block_specs=None,
    endpoints_num_filters: int = 48,
    se_ratio: Optional[float] = 0.2,
    expand_ratio: float = 6,
    filter_size_scale: float = 1.0,
    init_stochastic_depth_rate: float = 0.0,
    kernel_initializer='VarianceScaling',
    kernel_regularizer=None,
    bias_regularizer=None,
    activation: str = 'relu',
    use_sync_bn: bool = False,
    norm_momentum: float = 0.99,
    norm_epsilon: float = 0.001,
    **kwargs,
  ):
    """Builds SpineNet-Mobile from 'mbconv' block specs (None: SpineNet-Mobile-49).

    The arguments shared with every scale-permuted backbone are documented on
    `scale_permuted.ScalePermutedBackbone`; filter_size_scale is 1.0 for 49, 0.65
    for 49S and 0.6 for 49XS, and, like the reference, kernel_regularizer leaves
    the depthwise kernels alone.

    Args:
      se_ratio: squeeze-excitation ratio of every block (0 or None: no SE).
      expand_ratio: inverted bottleneck expansion of every block.
      **kwargs: passed to tf_keras.Model.
    """
    if expand_ratio < 1:
      raise ValueError(f'expand_ratio must be >= 1, got {expand_ratio}.')
    self._se_ratio = se_ratio
    self._expand_ratio = expand_ratio
    super().__init__(locals(), **kwargs)

  def _mbconv(self, x, in_filters, out_filters, strides, drop_rate=None):
    """One inverted bottleneck, ended like the reference's block group."""
    x = mobile_blocks.InvertedBottleneckBlock(
      in_filters=in_filters,
      out_filters=out_filters,
      strides=strides,
      stochastic_depth_drop_rate=drop_rate,
      se_ratio=self._se_ratio,
      expand_ratio=self._expand_ratio,
      se_gating_activation=SE_GATING_ACTIVATION,
      **self._factory.layer_kwargs(),
    )(x)
    return graph_layout.pad_depth(x, graph_layout.BLOCK_GROUP_END_DEPTH)

  def _build_stem(self, inputs: tf.Tensor) -> List[tf.Tensor]:
    """3x3/2 conv, BN, act (level 1), then a level-1 and a level-2 block."""
    x = self._factory.conv_norm_act(inputs, self._filters(0), 3, strides=2)
    net = []
    for level, strides in zip(STEM_LEVELS, STEM_STRIDES):
      x = self._mbconv(x, self._filters(level - 1), self._filters(level), strides)
      net.append(x)
    return net

  def _resample(
    self, x: tf.Tensor, parent: scale_permuted.Feature, target: scale_permuted.Feature
  ) -> tf.Tensor:
    return mobile_resample.resample_depthwise(
      x,
      parent.width,
      target.width,
      self._filters(target.level),
      self._factory,
      input_height=parent.height,
      target_height=target.height,
    )

  def _sum(self, parents):
    # Pairwise sums, in order: the published checkpoints' graph layout.
    x = parents[0]
    for parent in parents[1:]:
      x = tf_keras.layers.Add()([x, parent])
    return x

  def _block(
    self, x: tf.Tensor, spec: spinenet_specs.BlockSpec, drop_rate: Optional[float]
  ) -> tf.Tensor:
    filters = self._filters(spec.level)
    return self._mbconv(x, filters, filters, 1, drop_rate)


def build_spinenet_mobile(model_id: str = '49', **kwargs) -> SpineNetMobile:
  """SpineNet-Mobile for a published model id ('49', '49S', '49XS').

  The id sets endpoints_num_filters (48 / 40 / 24) and filter_size_scale
  (1.0 / 0.65 / 0.6); any of them, and every other SpineNetMobile argument, may be
  given in kwargs to override it.
  """
  scaling = spinenet_specs.lookup_model_id(
    model_id, spinenet_specs.SPINENET_MOBILE_SCALING, 'SpineNet-Mobile'
  )
  args = dict(
    endpoints_num_filters=scaling.endpoints_num_filters, filter_size_scale=scaling.filter_size_scale
  )
  args.update(kwargs)
  return SpineNetMobile(**args)

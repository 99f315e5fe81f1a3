"""SpineNet: a scale-permuted backbone (Du et al., CVPR 2020).

Xianzhi Du, Tsung-Yi Lin, Pengchong Jin, Golnaz Ghiasi, Mingxing Tan, Yin Cui,
Quoc V. Le, Xiaodan Song. SpineNet: Learning Scale-Permuted Backbone for Recognition
and Localization. https://arxiv.org/abs/1912.05027

The network is a stem (7x7 conv, max pool, then bottleneck groups: two of level 2,
or, for the scale-permuted ResNets R35-SP18 ... R0-SP53 (Sec. 3.3), the groups of
`stem_block_levels`) followed by blocks whose levels, types and parents come from
block specs (Sec. 3.1); each block sums its two resampled parents (Sec. 3.2), and
each output block also takes, unresampled, every earlier block of its level and
width that nothing consumed.
One 1x1 conv per level maps the output blocks to the endpoint width. The walk over the
specs is `scale_permuted.ScalePermutedBackbone`'s; this module supplies SpineNet's
stem, resampling (`resample.resample_with_alpha`) and residual block groups.
"""

from typing import List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import scale_permuted
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.layers import blocks
from official_spinenet.modeling.layers import resample

STEM_LEVEL = 2
NUM_STEM_BLOCKS = 2
STEM_FILTERS = 64
DEFAULT_STEM_BLOCK_LEVELS = (STEM_LEVEL,) * NUM_STEM_BLOCKS


def check_stem_block_levels(levels: Sequence[int], max_level: int) -> Tuple[int, ...]:
  """The stem levels as a tuple, or a ValueError saying what a stem must look like.

  A stem is scale-decreasing like ResNet's: it starts at level 2 (after the max
  pool) and each bottleneck group keeps the level or rises by one (stride 2), up to
  max_level at most. E.g. R35-SP18's stem is (2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5).
  """
  levels = tuple(int(level) for level in levels)
  steps = [b - a for a, b in zip(levels, levels[1:])]
  if (
    not levels
    or levels[0] != STEM_LEVEL
    or any(step not in (0, 1) for step in steps)
    or levels[-1] > max_level
  ):
    raise ValueError(
      f'stem_block_levels {levels} is not a stem: it must start at level {STEM_LEVEL}, '
      f'each next level must equal the previous one or exceed it by 1, and no level '
      f'may exceed max_level {max_level}; e.g. (2, 2) or (2, 3, 4, 5).'
    )
  return levels


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class SpineNet(scale_permuted.ScalePermutedBackbone):
  """SpineNet backbone as a functional Keras model.

  Input: images [B, H, W, 3]; static H and W of any size >= 2^max(max_level, block
  levels) (e.g. 224), dynamic ones multiples of it (see ScalePermutedBackbone).
  Output: dict str(level) -> [B, ceil(H / 2^level), ceil(W / 2^level),
  endpoints_num_filters] for level in [min_level, max_level].
  """

  NAME = 'SpineNet'
  DEFAULT_BLOCK_SPECS = spinenet_specs.SPINENET_BLOCK_SPECS
  FILTER_SIZE_MAP = spinenet_specs.SPINENET_FILTER_SIZE_MAP
  BLOCK_FNS = tuple(blocks.RESIDUAL_BLOCKS)
  STEM_BLOCKS = ((STEM_LEVEL, spinenet_specs.BOTTLENECK),) * NUM_STEM_BLOCKS

  def __init__(
    self,
    input_specs: scale_permuted.InputSpecLike = None,
    min_level: int = 3,
    max_level: int = 7,
    block_specs=None,
    endpoints_num_filters: int = 256,
    resample_alpha: float = 0.5,
    block_repeats: int = 1,
    filter_size_scale: float = 1.0,
    init_stochastic_depth_rate: float = 0.0,
    kernel_initializer='VarianceScaling',
    kernel_regularizer=None,
    bias_regularizer=None,
    activation: str = 'relu',
    use_sync_bn: bool = False,
    norm_momentum: float = 0.99,
    norm_epsilon: float = 0.001,
    stem_block_levels: Sequence[int] = DEFAULT_STEM_BLOCK_LEVELS,
    **kwargs,
  ):
    """Builds SpineNet; block_specs None means SpineNet-49.

    The arguments SpineNet shares with every scale-permuted backbone are documented
    on `scale_permuted.ScalePermutedBackbone`. Its own:

    Args:
      resample_alpha: cross-scale resampling factor alpha (Sec. 3.2).
      block_repeats: blocks per block group (block repeat, Sec. 4.1).
      stem_block_levels: levels of the stem's bottleneck groups after the max pool,
        each one a stem block (an input node of the block specs, which index them
        first); see `check_stem_block_levels`. The default (2, 2) is SpineNet's.
      **kwargs: passed to tf_keras.Model.
    """
    self._resample_alpha = resample_alpha
    self._block_repeats = block_repeats
    self._stem_block_levels = check_stem_block_levels(stem_block_levels, max_level)
    # Per instance: the stem's blocks are the input nodes of the spec walk.
    self.STEM_BLOCKS = tuple(  # pylint: disable=invalid-name
      (level, spinenet_specs.BOTTLENECK) for level in self._stem_block_levels
    )
    super().__init__(locals(), **kwargs)

  def _store_config(self, arguments, **normalized) -> None:
    super()._store_config(arguments, **normalized)
    # SpineNet's own stem stays out of the config, which is then what it was before
    # the argument existed; another stem is stored as a list, as JSON gives it back.
    if self._stem_block_levels == DEFAULT_STEM_BLOCK_LEVELS:
      del self._config_dict['stem_block_levels']
    else:
      self._config_dict['stem_block_levels'] = list(self._stem_block_levels)

  def _build_stem(self, inputs: tf.Tensor) -> List[tf.Tensor]:
    """7x7/2 conv, BN, act, 3x3/2 max pool, then a bottleneck group per stem level."""
    f = self._factory
    x = f.conv_norm_act(inputs, STEM_FILTERS, 7, strides=2)
    x = tf_keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')(x)
    net = []
    level = STEM_LEVEL
    for next_level in self._stem_block_levels:
      x = blocks.block_group(
        x,
        spinenet_specs.BOTTLENECK,
        self._filters(next_level),
        self._block_repeats,
        strides=2 ** (next_level - level),
        **f.layer_kwargs(),
      )
      level = next_level
      net.append(x)
    return net

  def _resample(
    self, x: tf.Tensor, parent: scale_permuted.Feature, target: scale_permuted.Feature
  ) -> tf.Tensor:
    return resample.resample_with_alpha(
      x,
      parent.width,
      parent.block_fn,
      target.width,
      self._filters(target.level),
      target.block_fn,
      self._resample_alpha,
      self._factory,
      input_height=parent.height,
      target_height=target.height,
    )

  def _block(
    self, x: tf.Tensor, spec: spinenet_specs.BlockSpec, drop_rate: Optional[float]
  ) -> tf.Tensor:
    return blocks.block_group(
      x,
      spec.block_fn,
      self._filters(spec.level),
      self._block_repeats,
      stochastic_depth_drop_rate=drop_rate,
      **self._factory.layer_kwargs(),
    )


def build_spinenet(model_id: str = '49', **kwargs) -> SpineNet:
  """SpineNet for a published model id ('49S', '49', '96', '143', '143L', '190').

  The id sets endpoints_num_filters, filter_size_scale, resample_alpha and
  block_repeats (Table 2); any of them, and every other SpineNet argument, may be
  given in kwargs to override it.
  """
  scaling = spinenet_specs.lookup_model_id(model_id, spinenet_specs.SPINENET_SCALING, 'SpineNet')
  args = dict(
    endpoints_num_filters=scaling.endpoints_num_filters,
    filter_size_scale=scaling.filter_size_scale,
    resample_alpha=scaling.resample_alpha,
    block_repeats=scaling.block_repeats,
  )
  args.update(kwargs)
  return SpineNet(**args)

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
"""

import copy
from typing import Dict, List

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import common
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import graph_layout
from official_spinenet.modeling.layers import mobile_blocks
from official_spinenet.modeling.layers import mobile_resample
from official_spinenet.modeling.layers import stochastic_depth

NUM_STEM_BLOCKS = 2
STEM_LEVELS = (1, 2)
STEM_STRIDES = (1, 2)
# The SE gate of the published SpineNet-Mobile models: relu6(x + 3) * 0.16667, the
# constant tf-models-official trains with (a 2e-5 relative difference to 1/6).
SE_GATING_ACTIVATION = 'hard_sigmoid_rounded'


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class SpineNetMobile(tf_keras.Model):
  """SpineNet-Mobile backbone as a functional Keras model.

  Input: images [B, H, W, 3], H and W divisible by 2^max(max_level, block levels)
  (128 for the published specs).
  Output: dict str(level) -> [B, H / 2^level, W / 2^level, endpoints_num_filters]
  for level in [min_level, max_level].
  """

  def __init__(self,
               input_specs: common.InputSpecLike = None,
               min_level: int = 3,
               max_level: int = 7,
               block_specs=None,
               endpoints_num_filters: int = 48,
               se_ratio: float = 0.2,
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
               **kwargs):
    """Builds SpineNet-Mobile.

    Args:
      input_specs: InputSpec or shape [B, H, W, 3]; H/W may be None.
      min_level: lowest endpoint level.
      max_level: highest endpoint level.
      block_specs: block specs (tuples, dicts or BlockSpecs, all 'mbconv') or a path
        to a JSON file written by `spinenet_specs.save_block_specs`; None means the
        published SpineNet-Mobile-49 specs.
      endpoints_num_filters: channels of every endpoint.
      se_ratio: squeeze-excitation ratio of every block (0 or None: no SE).
      expand_ratio: inverted bottleneck expansion of every block.
      filter_size_scale: width multiplier of all blocks (49: 1.0, 49S: 0.65,
        49XS: 0.6).
      init_stochastic_depth_rate: drop rate of the last block; block i (1-based) of
        the N specs drops init * i / N; the stem never drops. 0 turns it off.
      kernel_initializer: conv kernel initializer.
      kernel_regularizer: conv kernel regularizer (L2 weight decay); like the
        reference, depthwise kernels are not regularized.
      bias_regularizer: conv bias regularizer.
      activation: 'relu', 'swish', 'hard_swish', ... (`activations.get_activation`).
      use_sync_bn: synchronise BN statistics across replicas.
      norm_momentum: BN momentum.
      norm_epsilon: BN epsilon.
      **kwargs: passed to tf_keras.Model.
    """
    input_shape = common.input_shape_from_specs(input_specs)
    specs = common.resolve_block_specs(block_specs,
                                       spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS)
    filter_map = spinenet_specs.SPINENET_MOBILE_FILTER_SIZE_MAP
    self._max_block_level = max([max_level] + [s.level for s in specs])
    spinenet_specs.validate_block_specs(
        specs, NUM_STEM_BLOCKS, min_level, max_level,
        allowed_block_fns=(spinenet_specs.MBCONV,),
        max_block_level=self._max_block_level)
    if self._max_block_level > max(filter_map):
      raise ValueError(f'SpineNetMobile has block widths for levels up to '
                       f'{max(filter_map)}; got level {self._max_block_level}.')
    spinenet_specs.validate_input_size(input_shape, self._max_block_level,
                                       'SpineNetMobile')
    if filter_size_scale <= 0 or int(min(filter_map.values()) * filter_size_scale) < 1:
      raise ValueError(f'filter_size_scale {filter_size_scale} leaves a block without '
                       'channels; it must be >= '
                       f'{1.0 / min(filter_map.values())}.')
    if expand_ratio < 1:
      raise ValueError(f'expand_ratio must be >= 1, got {expand_ratio}.')

    config = {
        'input_specs': input_shape,
        'min_level': min_level,
        'max_level': max_level,
        'block_specs': [s.to_dict() for s in specs],
        'endpoints_num_filters': endpoints_num_filters,
        'se_ratio': se_ratio,
        'expand_ratio': expand_ratio,
        'filter_size_scale': filter_size_scale,
        'init_stochastic_depth_rate': init_stochastic_depth_rate,
        'kernel_initializer': kernel_initializer,
        'kernel_regularizer': kernel_regularizer,
        'bias_regularizer': bias_regularizer,
        'activation': activation,
        'use_sync_bn': use_sync_bn,
        'norm_momentum': norm_momentum,
        'norm_epsilon': norm_epsilon,
    }
    # Keras wraps dict and list attributes for tracking (DictWrapper is not a
    # Mapping and does not serialize); a closure keeps the config plain.
    self._constructor_config = lambda: copy.deepcopy(config)
    self._specs = specs
    self._min_level = min_level
    self._max_level = max_level
    self._filter_size_scale = filter_size_scale
    self._factory = conv_norm_act.LayerFactory(
        activation=activation, use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon, kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer)
    self._block_kwargs = dict(se_ratio=se_ratio, expand_ratio=expand_ratio,
                              se_gating_activation=SE_GATING_ACTIVATION,
                              **self._factory.layer_kwargs())

    inputs = tf_keras.Input(shape=input_shape[1:], batch_size=input_shape[0])
    net = self._build_stem(inputs)
    outputs = self._build_scale_permuted_network(net, input_shape[2],
                                                 init_stochastic_depth_rate)
    endpoints = self._build_endpoints(outputs, endpoints_num_filters)
    self._output_specs = {level: x.shape for level, x in endpoints.items()}
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)

  def _width(self, level: int) -> int:
    return int(spinenet_specs.SPINENET_MOBILE_FILTER_SIZE_MAP[level] *
               self._filter_size_scale)

  def _block(self, x, in_filters, out_filters, strides, drop_rate=None):
    """One inverted bottleneck, ended like the reference's block group."""
    x = mobile_blocks.InvertedBottleneckBlock(
        in_filters=in_filters, out_filters=out_filters, strides=strides,
        stochastic_depth_drop_rate=drop_rate, **self._block_kwargs)(x)
    return graph_layout.pad_depth(x, graph_layout.BLOCK_GROUP_END_DEPTH)

  def _build_stem(self, inputs) -> List[tf.Tensor]:
    """3x3/2 conv, BN, act (level 1), then a level-1 and a level-2 block."""
    x = self._factory.conv_norm_act(inputs, self._width(0), 3, strides=2)
    net = []
    for level, strides in zip(STEM_LEVELS, STEM_STRIDES):
      x = self._block(x, self._width(level - 1), self._width(level), strides)
      net.append(x)
    return net

  def _build_scale_permuted_network(self, net, input_width, init_drop_rate
                                    ) -> Dict[int, tf.Tensor]:
    """Walks the block specs; returns {level: output block} for output blocks."""
    f = self._factory
    width_of = lambda level: common.feature_width(input_width, level,
                                                  self._max_block_level)
    net_widths = [width_of(level) for level in STEM_LEVELS]
    consumers = [0] * len(net)
    outputs = {}
    for i, spec in enumerate(self._specs):
      target_width = width_of(spec.level)
      target_filters = self._width(spec.level)
      parents = []
      for offset in spec.input_offsets:
        parents.append(mobile_resample.resample_depthwise(
            net[offset], net_widths[offset], target_width, target_filters, f))
        consumers[offset] += 1
      if spec.is_output:
        # Blocks nothing consumed would be wasted; an output block of the same
        # resolution and width absorbs them unresampled.
        for j, feature in enumerate(net):
          if (consumers[j] == 0 and net_widths[j] == target_width and
              feature.shape[-1] == target_filters):
            parents.append(feature)
            consumers[j] += 1
      # Pairwise sums, in order: the published checkpoints' graph layout.
      x = parents[0]
      for parent in parents[1:]:
        x = tf_keras.layers.Add()([x, parent])
      x = f.activation_layer()(x)
      x = self._block(x, target_filters, target_filters, 1,
                      stochastic_depth.get_stochastic_depth_rate(
                          init_drop_rate, i + 1, len(self._specs)))
      net.append(x)
      net_widths.append(target_width)
      consumers.append(0)
      if spec.is_output:
        outputs[spec.level] = x
    return outputs

  def _build_endpoints(self, outputs, num_filters) -> Dict[str, tf.Tensor]:
    """A 1x1 conv, BN and activation per level to a common endpoint width."""
    return {str(level): self._factory.conv_norm_act(outputs[level], num_filters, 1)
            for level in range(self._min_level, self._max_level + 1)}

  def call(self, inputs, training=None, mask=None):
    common.check_input('SpineNetMobile', inputs, self._max_block_level)
    return super().call(inputs, training=training, mask=mask)

  @property
  def output_specs(self) -> Dict[str, tf.TensorShape]:
    """{str(level): TensorShape} of the endpoints."""
    return self._output_specs

  @property
  def block_specs(self) -> List[spinenet_specs.BlockSpec]:
    return list(self._specs)

  def get_config(self):
    config = self._constructor_config()
    config['kernel_initializer'] = common.serialize_initializer(config['kernel_initializer'])
    config['kernel_regularizer'] = common.serialize_regularizer(config['kernel_regularizer'])
    config['bias_regularizer'] = common.serialize_regularizer(config['bias_regularizer'])
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    for key in ('kernel_regularizer', 'bias_regularizer'):
      config[key] = common.deserialize_regularizer(config.get(key))
    config['kernel_initializer'] = common.deserialize_initializer(
        config.get('kernel_initializer', 'VarianceScaling'))
    return cls(**config)


def build_spinenet_mobile(model_id: str = '49', **kwargs) -> SpineNetMobile:
  """SpineNet-Mobile for a published model id ('49', '49S', '49XS').

  The id sets endpoints_num_filters (48 / 40 / 24) and filter_size_scale
  (1.0 / 0.65 / 0.6); any of them, and every other SpineNetMobile argument, may be
  given in kwargs to override it.
  """
  scaling = spinenet_specs.lookup_model_id(
      model_id, spinenet_specs.SPINENET_MOBILE_SCALING, 'SpineNet-Mobile')
  args = dict(endpoints_num_filters=scaling.endpoints_num_filters,
              filter_size_scale=scaling.filter_size_scale)
  args.update(kwargs)
  return SpineNetMobile(**args)

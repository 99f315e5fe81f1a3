"""SpineNet: a scale-permuted backbone (Du et al., CVPR 2020).

Xianzhi Du, Tsung-Yi Lin, Pengchong Jin, Golnaz Ghiasi, Mingxing Tan, Yin Cui,
Quoc V. Le, Xiaodan Song. SpineNet: Learning Scale-Permuted Backbone for Recognition
and Localization. https://arxiv.org/abs/1912.05027

The network is a fixed stem (7x7 conv, max pool, two level-2 bottleneck groups)
followed by blocks whose levels, types and parents come from block specs (Sec. 3.1);
each block sums its two resampled parents (Sec. 3.2), and each output block also
takes, unresampled, every earlier block of its level and width that nothing consumed.
One 1x1 conv per level maps the output blocks to the endpoint width.
"""

import copy
from typing import Dict, List

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import common
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.layers import blocks
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import resample
from official_spinenet.modeling.layers import stochastic_depth

STEM_LEVEL = 2
NUM_STEM_BLOCKS = 2
STEM_FILTERS = 64


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class SpineNet(tf_keras.Model):
  """SpineNet backbone as a functional Keras model.

  Input: images [B, H, W, 3], H and W divisible by 2^max(max_level, block levels).
  Output: dict str(level) -> [B, H / 2^level, W / 2^level, endpoints_num_filters]
  for level in [min_level, max_level].
  """

  def __init__(self,
               input_specs: common.InputSpecLike = None,
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
               **kwargs):
    """Builds SpineNet.

    Args:
      input_specs: InputSpec or shape [B, H, W, 3]; H/W may be None.
      min_level: lowest endpoint level.
      max_level: highest endpoint level.
      block_specs: block specs (tuples, dicts or BlockSpecs) or a path to a JSON
        file written by `spinenet_specs.save_block_specs`; None means SpineNet-49.
      endpoints_num_filters: channels of every endpoint.
      resample_alpha: cross-scale resampling factor alpha (Sec. 3.2).
      block_repeats: blocks per block group (block repeat, Sec. 4.1).
      filter_size_scale: width multiplier of all blocks (Sec. 4.1).
      init_stochastic_depth_rate: drop rate of the last block; block i (1-based)
        drops init * i / num_specs. 0 turns stochastic depth off.
      kernel_initializer: conv kernel initializer.
      kernel_regularizer: conv kernel regularizer (L2 weight decay).
      bias_regularizer: conv bias regularizer.
      activation: 'relu' or 'swish' (or any name `activations.get_activation` knows).
      use_sync_bn: synchronise BN statistics across replicas.
      norm_momentum: BN momentum.
      norm_epsilon: BN epsilon.
      **kwargs: passed to tf_keras.Model.
    """
    input_shape = common.input_shape_from_specs(input_specs)
    specs = common.resolve_block_specs(block_specs, spinenet_specs.SPINENET_BLOCK_SPECS)
    self._max_block_level = max([max_level] + [s.level for s in specs])
    spinenet_specs.validate_block_specs(
        specs, NUM_STEM_BLOCKS, min_level, max_level,
        allowed_block_fns=tuple(blocks.RESIDUAL_BLOCKS),
        max_block_level=self._max_block_level)
    spinenet_specs.validate_input_size(input_shape, self._max_block_level, 'SpineNet')
    if filter_size_scale <= 0:
      raise ValueError(f'filter_size_scale must be > 0, got {filter_size_scale}.')

    config = {
        'input_specs': input_shape,
        'min_level': min_level,
        'max_level': max_level,
        'block_specs': [s.to_dict() for s in specs],
        'endpoints_num_filters': endpoints_num_filters,
        'resample_alpha': resample_alpha,
        'block_repeats': block_repeats,
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
    # Keras wraps dict attributes for tracking; a closure keeps the config plain.
    self._constructor_config = lambda: copy.deepcopy(config)
    self._specs = specs
    self._min_level = min_level
    self._max_level = max_level
    self._factory = conv_norm_act.LayerFactory(
        activation=activation, use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon, kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer)

    inputs = tf_keras.Input(shape=input_shape[1:], batch_size=input_shape[0])
    net = self._build_stem(inputs, filter_size_scale, block_repeats)
    outputs = self._build_scale_permuted_network(
        net, input_shape[2], filter_size_scale, block_repeats, resample_alpha,
        init_stochastic_depth_rate)
    endpoints = self._build_endpoints(outputs, endpoints_num_filters)
    self._output_specs = {level: x.shape for level, x in endpoints.items()}
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)

  def _width(self, level: int, filter_size_scale: float) -> int:
    return int(spinenet_specs.SPINENET_FILTER_SIZE_MAP[level] * filter_size_scale)

  def _build_stem(self, inputs, filter_size_scale, block_repeats) -> List[tf.Tensor]:
    """7x7/2 conv, BN, act, 3x3/2 max pool, then two level-2 bottleneck groups."""
    f = self._factory
    x = f.conv_norm_act(inputs, STEM_FILTERS, 7, strides=2)
    x = tf_keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')(x)
    net = []
    for _ in range(NUM_STEM_BLOCKS):
      x = blocks.block_group(x, 'bottleneck', self._width(STEM_LEVEL, filter_size_scale),
                             block_repeats, **f.layer_kwargs())
      net.append(x)
    return net

  def _build_scale_permuted_network(self, net, input_width, filter_size_scale,
                                    block_repeats, alpha, init_drop_rate
                                    ) -> Dict[int, tf.Tensor]:
    """Walks the block specs; returns {level: output block} for output blocks."""
    f = self._factory
    width_of = lambda level: common.feature_width(input_width, level, self._max_block_level)
    net_widths = [width_of(STEM_LEVEL)] * len(net)
    net_block_fns = ['bottleneck'] * len(net)
    consumers = [0] * len(net)
    outputs = {}
    for i, spec in enumerate(self._specs):
      target_width = width_of(spec.level)
      target_filters = self._width(spec.level, filter_size_scale)
      parents = []
      for offset in spec.input_offsets:
        parents.append(resample.resample_with_alpha(
            net[offset], net_widths[offset], net_block_fns[offset], target_width,
            target_filters, spec.block_fn, alpha, f))
        consumers[offset] += 1
      if spec.is_output:
        # Blocks nothing consumed would be wasted; an output block of the same
        # resolution and width absorbs them unresampled.
        for j, feature in enumerate(net):
          if (consumers[j] == 0 and net_widths[j] == target_width and
              feature.shape[-1] == parents[0].shape[-1]):
            parents.append(feature)
            consumers[j] += 1
      x = f.activation_layer()(tf_keras.layers.Add()(parents))
      x = blocks.block_group(
          x, spec.block_fn, target_filters, block_repeats,
          stochastic_depth_drop_rate=stochastic_depth.get_stochastic_depth_rate(
              init_drop_rate, i + 1, len(self._specs)),
          **f.layer_kwargs())
      net.append(x)
      net_widths.append(target_width)
      net_block_fns.append(spec.block_fn)
      consumers.append(0)
      if spec.is_output:
        outputs[spec.level] = x
    return outputs

  def _build_endpoints(self, outputs, num_filters) -> Dict[str, tf.Tensor]:
    """A 1x1 conv, BN and activation per level to a common endpoint width."""
    return {str(level): self._factory.conv_norm_act(outputs[level], num_filters, 1)
            for level in range(self._min_level, self._max_level + 1)}

  def call(self, inputs, training=None, mask=None):
    common.check_input('SpineNet', inputs, self._max_block_level)
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


def build_spinenet(model_id: str = '49', **kwargs) -> SpineNet:
  """SpineNet for a published model id ('49S', '49', '96', '143', '143L', '190').

  The id sets endpoints_num_filters, filter_size_scale, resample_alpha and
  block_repeats (Table 2); any of them, and every other SpineNet argument, may be
  given in kwargs to override it.
  """
  scaling = spinenet_specs.lookup_model_id(model_id, spinenet_specs.SPINENET_SCALING,
                                           'SpineNet')
  args = dict(endpoints_num_filters=scaling.endpoints_num_filters,
              filter_size_scale=scaling.filter_size_scale,
              resample_alpha=scaling.resample_alpha,
              block_repeats=scaling.block_repeats)
  args.update(kwargs)
  return SpineNet(**args)

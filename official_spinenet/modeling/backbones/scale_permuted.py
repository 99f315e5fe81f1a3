"""The one builder of scale-permuted backbones (SpineNet, Du et al., CVPR 2020, Sec. 3).

A scale-permuted backbone is a stem, then one block per block spec (Sec. 3.1), then
one 1x1 conv, BN and activation per endpoint level. Each block sums its parents,
resampled to its level and width (Sec. 3.2); an output block also takes, as they
are, the earlier blocks of its level and channel count that nothing consumed
(`topology.merge_unconsumed`); the sum goes through the activation into the block.

`ScalePermutedBackbone` owns all of that: argument checks, the spec walk, the
endpoints, the input-size check in `call`, `output_specs`, `block_specs` and the
config. A family (SpineNet, SpineNet-Mobile, or one the architecture search
generates) is a subclass that supplies:

  NAME                 the family in messages ('SpineNet')
  DEFAULT_BLOCK_SPECS  the block specs used when none are given
  FILTER_SIZE_MAP      block width per level, before `filter_size_scale`
  BLOCK_FNS            the block types it can build
  STEM_BLOCKS          (level, block_fn) of each block the stem outputs
  _build_stem          image -> the stem blocks' outputs
  _resample            a parent's output -> the target block's level and input width
  _sum                 how the resampled parents are added (default: one Add)
  _block               the block itself

and a constructor with its own arguments next to the common ones (documented on
the class below) that passes them on as `super().__init__(locals(), **kwargs)`.
The graph the walk builds, down to the order of the layers, is what the published
checkpoints' layer numbering depends on (`layers/graph_layout.py`); a subclass
must keep it when it changes how it builds a step.
"""

import dataclasses
import math
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import tensorflow as tf
import tf_keras

from official_spinenet.modeling import topology
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.layers import constructor_config
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import stochastic_depth

InputSpecLike = Union[tf_keras.layers.InputSpec, Sequence[Optional[int]], None]


def input_shape_from_specs(input_specs: InputSpecLike) -> List[Optional[int]]:
  """[batch, height, width, channels] from an InputSpec, a shape list or None."""
  if input_specs is None:
    return [None, None, None, 3]
  shape = input_specs.shape if isinstance(input_specs, tf_keras.layers.InputSpec) else input_specs
  shape = list(tf.TensorShape(shape).as_list())
  if len(shape) != 4:
    raise ValueError(f'input_specs must describe [batch, height, width, channels], got {shape}.')
  return shape


def feature_width(input_width: Optional[int], level: int, max_block_level: int) -> int:
  """Static width of a level-`level` map ('same' padding: ceil(W / 2^level)).

  With a dynamic width only the ratios between levels matter, so a nominal width of
  2^max_block_level stands in for it (as the reference implementation does).
  """
  if input_width is None:
    input_width = 2**max_block_level
  return int(math.ceil(input_width / 2**level))


def feature_height(input_height: Optional[int], level: int) -> Optional[int]:
  """Static height of a level-`level` map, ceil(H / 2^level); None if H is dynamic."""
  return None if input_height is None else int(math.ceil(input_height / 2**level))


@dataclasses.dataclass(frozen=True)
class Feature:
  """Where a block's output lives: what resampling from or into it needs.

  Attributes:
    level: feature level.
    block_fn: block type.
    width: nominal spatial width (`feature_width`).
    height: static spatial height (`feature_height`); None if dynamic.
  """

  level: int
  block_fn: str
  width: int
  height: Optional[int] = None


class ScalePermutedBackbone(constructor_config.ConstructorConfig, tf_keras.Model):
  """Base of the scale-permuted backbones, as functional Keras models.

  Input: images [B, H, W, 3]. A size given in input_specs may be any size of at
  least 2^L, L = max(max_level, block levels) (e.g. 224, the paper's ImageNet
  size): where sizes do not divide, resampling resizes to the target block's size.
  A dynamic (None) size must be a multiple of 2^L at call time.
  Output: dict str(level) -> [B, ceil(H / 2^level), ceil(W / 2^level),
  endpoints_num_filters] for level in [min_level, max_level].

  Constructor arguments every family takes (in a subclass's signature, passed on
  through `locals()`):
    input_specs: InputSpec or shape [B, H, W, 3]; H/W may be None.
    min_level: lowest endpoint level.
    max_level: highest endpoint level.
    block_specs: block specs (tuples, dicts or BlockSpecs) or a path to a JSON file
      written by `spinenet_specs.save_block_specs`; None means DEFAULT_BLOCK_SPECS.
    endpoints_num_filters: channels of every endpoint.
    filter_size_scale: width multiplier of all blocks (Sec. 4.1).
    init_stochastic_depth_rate: drop rate of the last block; block i (1-based) of
      the N specs drops init * i / N; the stem never drops. 0 turns it off.
    kernel_initializer: conv kernel initializer.
    kernel_regularizer: conv kernel regularizer (L2 weight decay).
    bias_regularizer: conv bias regularizer.
    activation: 'relu', 'swish', ... (see `activations.get_activation`).
    use_sync_bn: synchronise BN statistics across replicas.
    norm_momentum: BN momentum.
    norm_epsilon: BN epsilon.
  """

  NAME: ClassVar[str]
  DEFAULT_BLOCK_SPECS: ClassVar[Sequence]
  FILTER_SIZE_MAP: ClassVar[Mapping[int, int]]
  BLOCK_FNS: ClassVar[Tuple[str, ...]]
  STEM_BLOCKS: ClassVar[Tuple[Tuple[int, str], ...]]

  def __init__(self, arguments: Mapping[str, Any], **kwargs):
    """Checks the arguments and builds the network.

    Args:
      arguments: the subclass constructor's arguments (its `locals()`): the common
        ones of the class docstring and its own; they become the config.
      **kwargs: passed to tf_keras.Model.
    """
    input_shape = input_shape_from_specs(arguments['input_specs'])
    specs = spinenet_specs.BlockSpec.resolve(arguments['block_specs'], self.DEFAULT_BLOCK_SPECS)
    self._store_config(arguments, input_specs=input_shape, block_specs=[s.to_dict() for s in specs])
    self._specs = specs
    self._min_level, self._max_level = arguments['min_level'], arguments['max_level']
    self._max_block_level = max([self._max_level] + [s.level for s in specs])
    self._filter_size_scale = arguments['filter_size_scale']
    self._check_arguments(input_shape)
    self._factory = conv_norm_act.LayerFactory.from_arguments(arguments)

    inputs = tf_keras.Input(shape=input_shape[1:], batch_size=input_shape[0])
    outputs = self._build_blocks(
      self._build_stem(inputs), input_shape[1:3], arguments['init_stochastic_depth_rate']
    )
    # A 1x1 conv, BN and activation per level to a common endpoint width.
    endpoints = {
      str(level): self._factory.conv_norm_act(outputs[level], arguments['endpoints_num_filters'], 1)
      for level in range(self._min_level, self._max_level + 1)
    }
    self._output_specs = {level: x.shape for level, x in endpoints.items()}
    super().__init__(inputs=inputs, outputs=endpoints, **kwargs)

  def _check_arguments(self, input_shape: Sequence[Optional[int]]) -> None:
    """Clear errors for specs, levels, input size and width this family cannot build."""
    spinenet_specs.validate_block_specs(
      self._specs,
      len(self.STEM_BLOCKS),
      self._min_level,
      self._max_level,
      allowed_block_fns=self.BLOCK_FNS,
      max_block_level=self._max_block_level,
    )
    if self._max_block_level > max(self.FILTER_SIZE_MAP):
      raise ValueError(
        f'{self.NAME} has block widths for levels up to '
        f'{max(self.FILTER_SIZE_MAP)}; got level {self._max_block_level}.'
      )
    self._check_input_size(input_shape)
    narrowest = min(self.FILTER_SIZE_MAP.values())
    if self._filter_size_scale <= 0 or int(narrowest * self._filter_size_scale) < 1:
      raise ValueError(
        f'filter_size_scale {self._filter_size_scale} leaves a block without '
        f'channels; it must be >= {1.0 / narrowest}.'
      )

  def _check_input_size(self, input_shape: Sequence[Optional[int]]) -> None:
    """Static sizes: at least 2^L; one dynamic side: the static one a multiple of 2^L.

    Below 2^L the coarsest levels would all be 1 pixel and the resampling would not
    know how many halvings lie between them. With one side dynamic, resampling
    works on nominal sizes, which the other side must then divide like.
    """
    stride = 2**self._max_block_level
    sizes = input_shape[1:3]
    for axis, size in zip(('height', 'width'), sizes):
      if size is not None and size < stride:
        raise ValueError(
          f'{self.NAME}: input {axis} {size} is smaller than 2^max_level = {stride}; '
          f'resize or pad the image to at least {stride}.'
        )
    if None in sizes:
      # The resampling layers are chosen at build time, so with a dynamic side only
      # the power-of-two path is possible and every static side must divide too.
      try:
        spinenet_specs.validate_input_size(input_shape, self._max_block_level, self.NAME)
      except ValueError as e:
        raise ValueError(
          f'{e} Sizes that are not multiples of {stride} (e.g. 224) need both height and '
          'width given in input_specs.'
        ) from None

  def _filters(self, level: int) -> int:
    """Block width at `level` (a bottleneck outputs 4x this)."""
    return int(self.FILTER_SIZE_MAP[level] * self._filter_size_scale)

  def _node(self, level: int, block_fn: str) -> topology.Node:
    """A block's level and output channels, for the merge rule."""
    return topology.Node(
      level, spinenet_specs.block_output_channels(block_fn, self._filters(level))
    )

  def _build_blocks(
    self,
    stem: Sequence[tf.Tensor],
    input_size: Sequence[Optional[int]],
    init_drop_rate: float,
  ) -> Dict[int, tf.Tensor]:
    """Walks the block specs after the stem; returns {level: output block}.

    input_size: the image's static (height, width), None where dynamic.
    """

    def feature(level: int, block_fn: str) -> Feature:
      width = feature_width(input_size[1], level, self._max_block_level)
      return Feature(level, block_fn, width, feature_height(input_size[0], level))

    features = [feature(level, block_fn) for level, block_fn in self.STEM_BLOCKS]
    merges = topology.merge_unconsumed(
      self._specs,
      [self._node(f.level, f.block_fn) for f in features],
      lambda spec: self._node(spec.level, spec.block_fn),
    )
    net = list(stem)
    outputs = {}
    for i, spec in enumerate(self._specs):
      target = feature(spec.level, spec.block_fn)
      parents = [self._resample(net[j], features[j], target) for j in spec.input_offsets]
      # Unconsumed blocks of the output block's level and channels join unresampled.
      parents += [net[j] for j in merges[i]]
      x = self._factory.activation_layer()(self._sum(parents))
      x = self._block(
        x, spec, stochastic_depth.get_stochastic_depth_rate(init_drop_rate, i + 1, len(self._specs))
      )
      net.append(x)
      features.append(target)
      if spec.is_output:
        outputs[spec.level] = x
    return outputs

  # Extension points: what a family supplies.

  def _build_stem(self, inputs: tf.Tensor) -> List[tf.Tensor]:
    """[B, H, W, 3] images -> the outputs of the stem blocks, as STEM_BLOCKS lists them."""
    raise NotImplementedError

  def _resample(self, x: tf.Tensor, parent: Feature, target: Feature) -> tf.Tensor:
    """A parent's output -> [B, H_t, W_t, C]: the target's resolution and input channels."""
    raise NotImplementedError

  def _sum(self, parents: Sequence[tf.Tensor]) -> tf.Tensor:
    """The sum of a block's inputs (before the activation): one Add over all."""
    return tf_keras.layers.Add()(list(parents))

  def _block(
    self, x: tf.Tensor, spec: spinenet_specs.BlockSpec, drop_rate: Optional[float]
  ) -> tf.Tensor:
    """The block of `spec` on its summed inputs, with stochastic depth `drop_rate`."""
    raise NotImplementedError

  # Keras model interface.

  def call(self, inputs, training=None, mask=None):
    # A clear error for a bad image size rather than a shape clash deep inside: a
    # side built dynamic is resampled by integer factors, so must divide by 2^L.
    built = self._config_dict['input_specs']
    dynamic = [
      size if built_size is None else None for size, built_size in zip(inputs.shape, built)
    ]
    spinenet_specs.validate_input_size(dynamic, self._max_block_level, self.NAME)
    return super().call(inputs, training=training, mask=mask)

  @property
  def output_specs(self) -> Dict[str, tf.TensorShape]:
    """{str(level): TensorShape} of the endpoints."""
    return self._output_specs

  @property
  def block_specs(self) -> List[spinenet_specs.BlockSpec]:
    return list(self._specs)

"""NAS-FPN: a feature pyramid network of searched merging cells (Ghiasi et al., CVPR 2019).

Golnaz Ghiasi, Tsung-Yi Lin, Quoc V. Le. NAS-FPN: Learning Scalable Feature Pyramid
Architecture for Object Detection. https://arxiv.org/abs/1904.07392

The decoder takes a backbone's features {C_min_level, ...} and gives the pyramid
{P_min_level, ..., P_max_level}, num_filters channels each:

1. Input pyramid (Sec. 3.1, "Feature pyramid network"): each level the backbone gives
   is projected to num_filters (1x1 conv + BN, only if its width differs); levels it
   lacks (P6, P7 for ResNet) come from the (projected) level below by a stride-2
   max pool.
2. Pyramid network, stacked `num_repeats` times with new weights each time (Sec. 3.1;
   Sec. 4.3, "Stacking pyramid networks"): the merging cells of `cell_specs` (see
   `nasfpn_specs`) in order. A cell resamples its two inputs to its level (a 1x1 conv
   + BN to `merge_filters` when the width differs, a k x k stride-k max pool down,
   nearest-neighbour upsampling up), combines them with its binary op (Fig. 4,
   `merging_cells`), adds, if it is an output cell, every node of its level that no
   cell consumed, then applies ReLU -> 3x3 conv (separable optionally) -> BN
   [-> DropBlock] (Sec. 3.1, "Merging cell"). The last num_levels cells are the next
   pyramid.
3. With `return_all_repeats`, the pyramid after every repeat is returned, for anytime
   (early-exit) detection with deep supervision (Sec. 3.2); `early_exit_model(k)`
   runs only the first k repeats.

Numerics, parameter count and checkpoint layout equal tf-models-official's NAS-FPN
decoder (never imported by this package; only the tests compare with it): convs have biases
and He fan-out normal initializers, and cells resample their inputs to 256 channels
whatever num_filters is (`merge_filters=256`; None merges at num_filters as the paper
describes). The functional graph keeps the reference's layer numbering
(`modeling/layers/graph_layout.py`), so its checkpoints restore key for key.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet.modeling import topology
from official_spinenet.modeling.decoders import merging_cells
from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.modeling.layers import constructor_config
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import dropblock
from official_spinenet.modeling.layers import graph_layout
from official_spinenet.modeling.layers import resample
from official_spinenet.utils import tracking

# tf-models-official resamples every cell input to 256 channels (its
# `_resample_feature_map` default), also when num_filters is not 256.
REFERENCE_MERGE_FILTERS = 256


def default_kernel_initializer() -> tf_keras.initializers.Initializer:
  """He normal over fan-out, untruncated: the reference's NAS-FPN conv initializer."""
  return tf_keras.initializers.VarianceScaling(
    scale=2.0, mode='fan_out', distribution='untruncated_normal'
  )


def _input_shapes(input_specs) -> Dict[str, List[Optional[int]]]:
  """{str(level): [B, H, W, C]} from a dict of TensorShapes, shape lists or InputSpecs."""
  if not (isinstance(input_specs, Mapping) or hasattr(input_specs, 'items')):
    raise ValueError(
      'NASFPN input_specs must be a dict str(level) -> shape [B, H, W, C] '
      f'(e.g. backbone.output_specs), got {input_specs!r}.'
    )
  shapes = {}
  for key, spec in input_specs.items():
    try:
      level = int(key)
    except (TypeError, ValueError) as e:
      raise ValueError(f'NASFPN input_specs key {key!r} is not a level number.') from e
    if isinstance(spec, tf_keras.layers.InputSpec):
      spec = spec.shape
    shape = tf.TensorShape(spec).as_list() if spec is not None else None
    if shape is None or len(shape) != 4 or shape[-1] is None:
      raise ValueError(
        f'NASFPN input_specs[{key!r}] must be [batch, height, width, '
        f'channels] with known channels, got {spec}.'
      )
    shapes[str(level)] = shape
  return dict(sorted(shapes.items(), key=lambda item: int(item[0])))


def check_feature_sizes(
  shapes: Mapping[str, Sequence[Optional[int]]],
  min_level: int,
  max_level: int,
  name: str = 'NASFPN',
) -> None:
  """Raises a clear ValueError if the features cannot come from a valid image size.

  A level-l map of side s comes from an image of side s * 2^l; every level of the
  pyramid must divide that image exactly, i.e. it must be divisible by 2^max_level
  (NAS-FPN pads images to multiples of 128 for levels 3-7), and the given levels must
  agree on it. Unknown (None) sizes are not checked.

  Args:
    shapes: {str(level): [B, H, W, C]} of the decoder's inputs.
    min_level: lowest pyramid level.
    max_level: highest pyramid level.
    name: how the message names the model.
  """
  stride = 2**max_level
  for axis, index in (('height', 1), ('width', 2)):
    image_sizes = {}
    for key, shape in shapes.items():
      level, size = int(key), shape[index]
      if size is None or not min_level <= level <= max_level:
        continue
      image_size = size * 2**level
      if image_size % stride:
        raise ValueError(
          f'{name}: the level-{level} input {axis} {size} comes from an image {axis} of '
          f'{image_size}, which is not divisible by 2^max_level = {stride}; resize or '
          f'pad the image to a multiple of {stride} (e.g. '
          f'{-(-image_size // stride) * stride}).'
        )
      image_sizes[level] = image_size
    if len(set(image_sizes.values())) > 1:
      raise ValueError(
        f'{name}: the input levels imply different image {axis}s: '
        + ', '.join(f'level {l}: {size}' for l, size in sorted(image_sizes.items()))
        + '.'
      )


def _check_arguments(
  shapes: Mapping[str, Sequence[Optional[int]]],
  specs: Sequence[nasfpn_specs.CellSpec],
  config: Mapping[str, Any],
) -> None:
  """Clear errors for what NASFPN cannot build (config: its constructor arguments)."""
  min_level, max_level = config['min_level'], config['max_level']
  nasfpn_specs.validate_cell_specs(specs, min_level, max_level)
  merge_filters = config['merge_filters']
  for key, value in (
    ('num_filters', config['num_filters']),
    ('num_repeats', config['num_repeats']),
    ('merge_filters', 1 if merge_filters is None else merge_filters),
  ):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'NASFPN {key} must be a positive int, got {value!r}.')
  if str(min_level) not in shapes:
    raise ValueError(
      f'NASFPN needs the backbone features of min_level {min_level}; got levels '
      f'{list(shapes)}. (Higher levels it lacks come by max pooling.)'
    )
  check_feature_sizes(shapes, min_level, max_level)
  dropblock.DropBlock(config['dropblock_drop_rate'], config['dropblock_size'])


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class NASFPN(constructor_config.ConstructorConfig, tf_keras.Model):
  """NAS-FPN decoder as a functional Keras model.

  Input: dict str(level) -> [B, H / 2^level, W / 2^level, C_level] from a backbone;
  it must hold min_level; levels of [min_level, max_level] it lacks come from the
  level below by max pooling; other levels are ignored. H and W (the image size)
  must be divisible by 2^max_level.
  Output: dict str(level) -> [B, H / 2^level, W / 2^level, num_filters] for level in
  [min_level, max_level]; with `return_all_repeats`, a list of num_repeats such dicts
  (the pyramid after each repeat; the last is the default output).
  """

  def __init__(
    self,
    input_specs: Mapping[str, Any],
    min_level: int = 3,
    max_level: int = 7,
    cell_specs=None,
    num_filters: int = 256,
    num_repeats: int = 5,
    use_separable_conv: bool = False,
    merge_filters: Optional[int] = REFERENCE_MERGE_FILTERS,
    activation: str = 'relu',
    use_sync_bn: bool = False,
    norm_momentum: float = 0.99,
    norm_epsilon: float = 0.001,
    kernel_initializer=None,
    kernel_regularizer=None,
    bias_regularizer=None,
    dropblock_drop_rate: float = 0.0,
    dropblock_size: int = 3,
    return_all_repeats: bool = False,
    **kwargs,
  ):
    """Builds NAS-FPN.

    Args:
      input_specs: {str(level): shape [B, H, W, C]} of the backbone's features (e.g.
        `backbone.output_specs`); H and W may be None.
      min_level: lowest output level; the backbone must give it.
      max_level: highest output level.
      cell_specs: merging-cell specs (tuples, dicts or CellSpecs) or a path to a JSON
        file written by `nasfpn_specs.save_cell_specs`; None means the paper's cell.
      num_filters: channels of every pyramid level (the "@256" of "7 @ 256").
      num_repeats: how many times the pyramid network is stacked (the "7").
      use_separable_conv: separable convs (depthwise + pointwise) everywhere, as in
        the paper's mobile models.
      merge_filters: channels at which a cell resamples and merges its inputs (a 1x1
        conv + BN projects inputs of another width). 256 as tf-models-official
        (needed for its checkpoints when num_filters != 256); None means
        num_filters, as in the paper.
      activation: activation before each cell's conv ('relu'; see
        `activations.get_activation`).
      use_sync_bn: synchronise BN statistics across replicas.
      norm_momentum: BN momentum.
      norm_epsilon: BN epsilon.
      kernel_initializer: conv kernel initializer; None is the reference's He
        fan-out normal (`default_kernel_initializer`).
      kernel_regularizer: conv kernel regularizer (L2 weight decay).
      bias_regularizer: conv bias regularizer.
      dropblock_drop_rate: DropBlock after every cell's BN in training (NAS-FPN
        Sec. 4.1 and 4.4 train the long schedules with it); 0 builds no DropBlock.
      dropblock_size: DropBlock block size.
      return_all_repeats: `call` returns the list of the pyramids after every
        repeat instead of the last one. The weights and checkpoint layout do not
        depend on it.
      **kwargs: passed to tf_keras.Model.
    """
    shapes = _input_shapes(input_specs)
    specs = nasfpn_specs.resolve_cell_specs(cell_specs)
    self._store_config(locals(), input_specs=shapes, cell_specs=[s.to_dict() for s in specs])
    _check_arguments(shapes, specs, self._config_dict)
    self._levels = list(range(min_level, max_level + 1))
    # Every node has num_filters channels, so the merge rule compares levels only.
    merges = topology.merge_unconsumed(specs, [topology.Node(l) for l in self._levels])
    # Each cell with the nodes it absorbs. (Merges alone would be all-empty tuples when
    # every node is consumed, which Keras takes for layers set before Model.__init__.)
    self._cells = list(zip(specs, merges))
    self._num_filters = num_filters
    self._merge_filters = num_filters if merge_filters is None else merge_filters
    self._use_separable_conv = use_separable_conv
    self._dropblock_args = dict(drop_rate=dropblock_drop_rate, block_size=dropblock_size)
    self._factory = conv_norm_act.LayerFactory.from_arguments(
      locals(),
      kernel_initializer=(
        default_kernel_initializer() if kernel_initializer is None else kernel_initializer
      ),
    )
    inputs, pyramids = self._build_repeats(shapes, num_repeats)
    self._output_specs = {level: x.shape for level, x in pyramids[-1].items()}
    super().__init__(inputs=inputs, outputs=pyramids[-1], **kwargs)
    # The per-repeat graphs share this model's layers; kept out of Keras' attribute
    # tracking so that they add nothing to `layers` or the checkpoint.
    self._repeat_graph = tracking.Untracked((inputs, pyramids))
    self._early_exit_models = tracking.Untracked({})
    self._all_repeats_model = tracking.Untracked(
      tf_keras.Model(inputs, pyramids) if return_all_repeats else None
    )

  def _conv(self, filters: int, kernel_size: int) -> tf_keras.layers.Layer:
    """A conv with bias (as the reference), separable if configured."""
    f = self._factory
    if self._use_separable_conv:
      return tf_keras.layers.SeparableConv2D(
        filters=filters,
        kernel_size=kernel_size,
        padding='same',
        depthwise_initializer=conv_norm_act.clone_initializer(f.kernel_initializer),
        pointwise_initializer=conv_norm_act.clone_initializer(f.kernel_initializer),
        bias_initializer='zeros',
        depthwise_regularizer=f.kernel_regularizer,
        pointwise_regularizer=f.kernel_regularizer,
        bias_regularizer=f.bias_regularizer,
      )
    return f.conv(filters, kernel_size, use_bias=True, bias_initializer='zeros')

  def _resample(self, x: tf.Tensor, level: int, target_level: int, filters: int) -> tf.Tensor:
    """[B, H_l, W_l, C] at `level` -> [B, H_t, W_t, filters] at `target_level`.

    A 1x1 conv + BN if C != filters, then one k x k stride-k max pool (k =
    2^(target - level)) or nearest-neighbour upsampling by 2^(level - target).
    """
    if x.shape[-1] != filters:
      x = self._factory.norm()(self._conv(filters, 1)(x))
    if level < target_level:
      stride = 2 ** (target_level - level)
      return tf_keras.layers.MaxPool2D(pool_size=stride, strides=stride, padding='same')(x)
    if level > target_level:
      x = resample.NearestUpsampling(2 ** (level - target_level))(x)
      return graph_layout.pad_depth(x, graph_layout.UPSAMPLING_DEPTH - 1)
    compute_dtype = tf_keras.mixed_precision.global_policy().compute_dtype
    if x.dtype != compute_dtype:
      # An untouched float32 input under mixed precision joins the compute dtype.
      x = tf.cast(x, compute_dtype)
    return x

  def _build_input_pyramid(self, inputs: Dict[str, tf.Tensor]) -> List[tf.Tensor]:
    """The backbone's levels projected to num_filters; missing ones max-pooled."""
    feats = []
    for level in self._levels:
      if str(level) in inputs:
        feats.append(self._resample(inputs[str(level)], level, level, self._num_filters))
      else:
        feats.append(self._resample(feats[-1], level - 1, level, self._num_filters))
    return feats

  def _build_repeats(
    self, shapes: Mapping[str, Sequence[Optional[int]]], num_repeats: int
  ) -> Tuple[Dict[str, tf.Tensor], List[Dict[str, tf.Tensor]]]:
    """The graph: the input pyramid, then the pyramid network num_repeats times.

    Returns:
      The inputs {str(level): [B, H_l, W_l, C_l]} and the output pyramid of every
      repeat, {str(level): [B, H_l, W_l, num_filters]} each.
    """
    inputs = {
      key: tf_keras.Input(shape=shape[1:], batch_size=shape[0]) for key, shape in shapes.items()
    }
    feats = self._build_input_pyramid(inputs)
    pyramids = []
    for _ in range(num_repeats):
      feats = self._build_pyramid_network(feats)
      pyramids.append({str(level): x for level, x in zip(self._levels, feats)})
    return inputs, pyramids

  def _build_pyramid_network(self, feats: List[tf.Tensor]) -> List[tf.Tensor]:
    """One repeat: walks the cell specs; returns the output cells ordered by level."""
    f = self._factory
    nodes, levels = list(feats), list(self._levels)
    for spec, absorbed in self._cells:
      inputs = [
        self._resample(nodes[i], levels[i], spec.level, self._merge_filters)
        for i in spec.input_offsets
      ]
      x = merging_cells.merge(spec.binary_op, inputs, [levels[i] for i in spec.input_offsets])
      # Nodes no cell consumed would be wasted; the output cell of their level
      # absorbs them (Sec. 3.1).
      for j in absorbed:
        x = tf_keras.layers.Add()(
          [x, self._resample(nodes[j], levels[j], spec.level, self._merge_filters)]
        )
      x = f.norm()(self._conv(self._num_filters, 3)(f.activation_layer()(x)))
      if self._dropblock_args['drop_rate']:
        x = dropblock.DropBlock(**self._dropblock_args)(x)
      nodes.append(x)
      levels.append(spec.level)
    num_levels = len(self._levels)
    outputs = dict(zip(levels[-num_levels:], nodes[-num_levels:]))
    return [outputs[level] for level in self._levels]

  def _check_inputs(self, inputs) -> None:
    """Static check of the feature sizes (Keras itself names missing levels)."""
    if isinstance(inputs, Mapping):
      check_feature_sizes(
        {key: x.shape.as_list() for key, x in inputs.items() if x.shape.rank == 4},
        self._levels[0],
        self._levels[-1],
      )

  def call(self, inputs, training=None, mask=None):
    self._check_inputs(inputs)
    if self._all_repeats_model.value is not None:
      return self._all_repeats_model.value(inputs, training=training)
    return super().call(inputs, training=training, mask=mask)

  def early_exit_model(self, num_repeats: int) -> tf_keras.Model:
    """A model sharing these weights that runs only the first `num_repeats` repeats.

    For anytime detection (Sec. 3.2): its output is the pyramid dict after repeat
    `num_repeats` (1-based); it takes the same input dict as this model.
    """
    inputs, pyramids = self._repeat_graph.value
    if not 1 <= num_repeats <= len(pyramids):
      raise ValueError(f'num_repeats must be in [1, {len(pyramids)}], got {num_repeats}.')
    models = self._early_exit_models.value
    if num_repeats not in models:
      models[num_repeats] = tf_keras.Model(inputs, pyramids[num_repeats - 1])
    return models[num_repeats]

  @property
  def num_repeats(self) -> int:
    return self._config_dict['num_repeats']

  @property
  def cell_specs(self) -> List[nasfpn_specs.CellSpec]:
    return [spec for spec, _ in self._cells]

  @property
  def output_specs(self) -> Dict[str, tf.TensorShape]:
    """{str(level): TensorShape} of the output pyramid."""
    return self._output_specs


def build_nasfpn(**kwargs) -> NASFPN:
  """NASFPN(**kwargs), as the task's decoder builder (called with input_specs etc.)."""
  return NASFPN(**kwargs)

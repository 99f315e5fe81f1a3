"""Parameter and multiply-add counts of Keras models.

Convention: the "FLOPs" of the SpineNet, SpineNet-Mobile and NAS-FPN papers are
multiply-adds of the convolution and fully connected layers, for one image. We
count exactly those:

  Conv1D/2D/3D       prod(output spatial) * prod(kernel) * C_in / groups * C_out
  Conv2DTranspose    prod(input spatial) * prod(kernel) * C_in * C_out
  DepthwiseConv2D    prod(output spatial) * prod(kernel) * C_in * depth_multiplier
  SeparableConv2D    the depthwise part above + prod(output spatial) * C_mid * C_out
  Dense              prod(output dims except the last) * C_in * C_out

Batch norm, activations, pooling, resizing, additions and biases are not counted.

Every call of a layer counts: a head whose convs are shared across five pyramid
levels contributes five times. To see the calls, `multiply_adds_by_layer` wraps the
`call` of every conv/dense layer of the model (recursively, nested layers and models
included), traces the model once with `tf.function` on an input signature of the
given shape (graph construction only, no arithmetic, so a 1280 x 1280 input is
cheap) and reads the static input/output shapes of each call.
"""

import dataclasses
import functools
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import tensorflow as tf
import tf_keras

_CONV_TYPES = (
  tf_keras.layers.Conv1D,
  tf_keras.layers.Conv2D,
  tf_keras.layers.Conv3D,
  tf_keras.layers.DepthwiseConv2D,
  tf_keras.layers.SeparableConv2D,
  tf_keras.layers.SeparableConv1D,
  tf_keras.layers.DepthwiseConv1D,
)
_COUNTED_TYPES = _CONV_TYPES + (tf_keras.layers.Dense,)


@dataclasses.dataclass(frozen=True)
class LayerCall:
  """One counted call of a layer during the traced forward pass."""

  name: str
  kind: str
  input_shape: tuple
  output_shape: tuple
  multiply_adds: int
  # The called layer, to attribute the call to a part of the model (`by_part`).
  layer: Any = dataclasses.field(default=None, compare=False, repr=False)


def count_params(model_or_layer: tf_keras.layers.Layer) -> int:
  """Number of trainable parameters (shared variables counted once).

  BN moving statistics are not trainable and are not counted; BN gamma and beta are.

  Raises:
    ValueError: if the layer has not been built (its weights do not exist yet).
  """
  if not model_or_layer.built:
    raise ValueError(f'{model_or_layer.name} is not built; call it on an input first.')
  return int(
    sum(np.prod(w.shape.as_list(), dtype=np.int64) for w in model_or_layer.trainable_weights)
  )


def _static_shape(x, layer_name: str) -> tuple:
  shape = tuple(tf.TensorShape(x.shape).as_list())
  if any(d is None for d in shape):
    raise ValueError(
      f'Layer {layer_name} saw the dynamic shape {shape}; multiply-adds '
      'need a fully static input shape.'
    )
  return shape


def _channel_axis(layer) -> int:
  return 1 if getattr(layer, 'data_format', 'channels_last') == 'channels_first' else -1


def _spatial(shape: tuple, layer) -> int:
  """Product of the batch and spatial dims (everything but the channel axis)."""
  axis = _channel_axis(layer) % len(shape)
  return int(np.prod([d for i, d in enumerate(shape) if i != axis], dtype=np.int64))


def layer_multiply_adds(
  layer: tf_keras.layers.Layer, input_shape: tuple, output_shape: tuple
) -> int:
  """Multiply-adds of one call of a conv/dense layer (for the whole batch)."""
  if isinstance(layer, tf_keras.layers.Dense):
    return int(np.prod(output_shape[:-1], dtype=np.int64)) * input_shape[-1] * output_shape[-1]
  c_in = input_shape[_channel_axis(layer)]
  c_out = output_shape[_channel_axis(layer)]
  kernel = int(np.prod(layer.kernel_size, dtype=np.int64))
  out_positions = _spatial(output_shape, layer)
  if isinstance(layer, (tf_keras.layers.SeparableConv1D, tf_keras.layers.SeparableConv2D)):
    c_mid = c_in * layer.depth_multiplier
    return out_positions * kernel * c_mid + out_positions * c_mid * c_out
  if isinstance(layer, (tf_keras.layers.DepthwiseConv1D, tf_keras.layers.DepthwiseConv2D)):
    return out_positions * kernel * c_in * layer.depth_multiplier
  if isinstance(
    layer,
    (
      tf_keras.layers.Conv1DTranspose,
      tf_keras.layers.Conv2DTranspose,
      tf_keras.layers.Conv3DTranspose,
    ),
  ):
    return _spatial(input_shape, layer) * kernel * c_in * c_out
  groups = getattr(layer, 'groups', 1) or 1
  return out_positions * kernel * (c_in // groups) * c_out


def _counted_layers(model: tf_keras.layers.Layer) -> List[tf_keras.layers.Layer]:
  layers = model._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access
  return [layer for layer in layers if isinstance(layer, _COUNTED_TYPES)]


def _input_signature(model, input_shape) -> Any:
  """TensorSpecs from a shape, a TensorSpec, or a dict/list/tuple of either."""
  if isinstance(input_shape, tf.TensorSpec):
    return input_shape
  if isinstance(input_shape, tf.TensorShape) or (
    isinstance(input_shape, (list, tuple))
    and all(d is None or isinstance(d, (int, np.integer)) for d in input_shape)
  ):
    shape = [1 if d is None else int(d) for d in tf.TensorShape(input_shape).as_list()]
    return tf.TensorSpec(shape, getattr(model, 'compute_dtype', None) or tf.float32)
  if isinstance(input_shape, dict):
    return {k: _input_signature(model, v) for k, v in input_shape.items()}
  if isinstance(input_shape, (list, tuple)):
    return type(input_shape)(_input_signature(model, v) for v in input_shape)
  raise TypeError(
    f'input_shape must be a shape, a TensorSpec or a dict/list of them, got {input_shape!r}.'
  )


def _batch_size(signature) -> int:
  sizes = {int(s.shape[0]) for s in tf.nest.flatten(signature) if s.shape.rank}
  if len(sizes) != 1:
    raise ValueError(f'Inputs must share one batch size, got {sorted(sizes)}.')
  return sizes.pop()


def multiply_adds_by_layer(
  model: tf_keras.layers.Layer, input_shape: Union[Sequence[int], Any]
) -> List[LayerCall]:
  """Every counted conv/dense call of one traced forward pass, per image.

  Args:
    model: a Keras model or layer (built or not; it is called once, symbolically).
    input_shape: the input's shape including the batch dimension (None -> 1), a
      tf.TensorSpec, or a nested structure (e.g. a dict level -> shape) of them.

  Returns:
    A LayerCall per call of a counted layer, in call order; multiply_adds are per
    image (divided by the batch size).
  """
  signature = _input_signature(model, input_shape)
  batch = _batch_size(signature)
  records = []
  patched = []

  def wrap(layer):
    original = layer.call

    @functools.wraps(original)
    @tf.autograph.experimental.do_not_convert
    def call(inputs, *args, **kwargs):
      outputs = original(inputs, *args, **kwargs)
      in_shape = _static_shape(inputs, layer.name)
      out_shape = _static_shape(outputs, layer.name)
      records.append(
        LayerCall(
          layer.name,
          type(layer).__name__,
          in_shape,
          out_shape,
          layer_multiply_adds(layer, in_shape, out_shape) // batch,
          layer,
        )
      )
      return outputs

    return call

  @tf.function(autograph=False)
  def forward(inputs):
    return model(inputs, training=False)

  if not model.built:
    # A layer creates its sublayers when first called: build it (one trace) before
    # looking for the layers to instrument.
    tf.function(forward.python_function, autograph=False).get_concrete_function(signature)
  try:
    for layer in _counted_layers(model):
      had_own = 'call' in layer.__dict__
      patched.append((layer, had_own, layer.__dict__.get('call')))
      object.__setattr__(layer, 'call', wrap(layer))

    forward.get_concrete_function(signature)
  finally:
    for layer, had_own, own in patched:
      if had_own:
        object.__setattr__(layer, 'call', own)
      else:
        object.__delattr__(layer, 'call')
  return records


def count_multiply_adds(
  model: tf_keras.layers.Layer, input_shape: Union[Sequence[int], Any]
) -> int:
  """Multiply-adds of conv and dense layers for one image (see the module docstring).

  Args:
    model: a Keras model or layer; nested layers/models and repeated calls count.
    input_shape: input shape with batch dimension, e.g. [1, 640, 640, 3] (a None
      batch means 1); or a TensorSpec or nested structure of shapes.
  """
  return int(sum(r.multiply_adds for r in multiply_adds_by_layer(model, input_shape)))


def by_part(
  calls: Sequence[LayerCall], parts: Mapping[str, tf_keras.layers.Layer]
) -> Dict[str, int]:
  """Sums the multiply-adds of `calls` per part of the model.

  Args:
    calls: from `multiply_adds_by_layer`.
    parts: name -> a sublayer of the traced model (e.g. 'backbone' -> model.backbone).
      A call counts toward the first part holding its layer.

  Returns:
    name -> multiply-adds per image, for every part, plus 'other' for calls of
    layers in no part (always present, usually 0).
  """
  owner = {}
  for name, part in reversed(list(parts.items())):
    owner.update({id(layer): name for layer in _counted_layers(part)})
  totals = dict.fromkeys([*parts, 'other'], 0)
  for call in calls:
    totals[owner.get(id(call.layer), 'other')] += call.multiply_adds
  return totals

"""Pieces shared by the scale-permuted backbones: input specs, validation, config."""

import math
from typing import Any, Dict, List, Optional, Sequence, Union

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import spinenet_specs

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


def resolve_block_specs(block_specs, default) -> List[spinenet_specs.BlockSpec]:
  """Block specs from None (default table), a JSON path, or a list of specs."""
  if isinstance(block_specs, str):
    return spinenet_specs.load_block_specs(block_specs)
  return spinenet_specs.build_block_specs(block_specs, default=default)


def feature_width(input_width: Optional[int], level: int, max_block_level: int) -> int:
  """Static width of a level-`level` map ('same' padding: ceil(W / 2^level)).

  With a dynamic width only the ratios between levels matter, so a nominal width of
  2^max_block_level stands in for it (as the reference implementation does).
  """
  if input_width is None:
    input_width = 2 ** max_block_level
  return int(math.ceil(input_width / 2 ** level))


def check_input(name: str, inputs: tf.Tensor, max_level: int) -> None:
  """Static check that the image size suits the network (clear error, not a shape clash)."""
  spinenet_specs.validate_input_size(inputs.shape, max_level, name)


def serialize_regularizer(regularizer) -> Optional[Dict[str, Any]]:
  return None if regularizer is None else tf_keras.regularizers.serialize(regularizer)


def deserialize_regularizer(config):
  if config is None or isinstance(config, tf_keras.regularizers.Regularizer):
    return config
  return tf_keras.regularizers.deserialize(config)


def serialize_initializer(initializer):
  if isinstance(initializer, str):
    return initializer
  return tf_keras.initializers.serialize(initializer)


def deserialize_initializer(config):
  if isinstance(config, (str, tf_keras.initializers.Initializer)):
    return config
  return tf_keras.initializers.deserialize(config)

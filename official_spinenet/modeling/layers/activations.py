"""Activation functions by name.

SpineNet uses ReLU by default and Swish for its long training protocol (Sec. 4.3 of
the SpineNet paper); SpineNet-Mobile uses hard Swish and gates squeeze-excitation
with a hard sigmoid.
"""

from typing import Callable

import tensorflow as tf


def hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
  """relu6(x + 3) / 6, the piecewise-linear sigmoid of MobileNetV3."""
  return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x: tf.Tensor) -> tf.Tensor:
  """x * relu6(x + 3) / 6 (MobileNetV3)."""
  return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_sigmoid_rounded(x: tf.Tensor) -> tf.Tensor:
  """relu6(x + 3) * 0.16667, the hard sigmoid of the published checkpoints.

  The published SpineNet-Mobile checkpoints were trained with this rounded constant
  (2e-5 relative to 1/6); SpineNet-Mobile gates its squeeze-excitation with it so
  that those checkpoints reproduce their outputs.
  """
  return tf.nn.relu6(x + 3.0) * 0.16667


_ACTIVATIONS = {
  'relu': tf.nn.relu,
  'relu6': tf.nn.relu6,
  'swish': tf.nn.swish,
  'silu': tf.nn.swish,
  'hard_swish': hard_swish,
  'sigmoid': tf.nn.sigmoid,
  'hard_sigmoid': hard_sigmoid,
  'hard_sigmoid_rounded': hard_sigmoid_rounded,
  'linear': tf.identity,
}

ACTIVATION_NAMES = tuple(sorted(_ACTIVATIONS))


def get_activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """Returns the activation function called `name`.

  Raises:
    ValueError: for an unknown name; the message lists the known ones.
  """
  if callable(name):
    return name
  key = str(name).lower()
  if key not in _ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; choose one of {list(ACTIVATION_NAMES)}.')
  return _ACTIVATIONS[key]

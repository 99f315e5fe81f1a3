"""One place that makes the convolutions, batch norms and activations of our models.

`LayerFactory` bundles what every conv and norm of a model shares (initializer,
regularizers, activation, sync BN, BN momentum/epsilon), so builders do not thread
six keyword arguments through every call. The defaults follow the reference
numerics of the SpineNet paper's TF2 implementation: no conv bias before BN, Keras
'same' padding, BN momentum 0.99 and epsilon 1e-3.
"""

import dataclasses
from typing import Any, Mapping, Optional, Union

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import activations
from official_spinenet.modeling.layers import batch_norm

Initializer = Union[str, tf_keras.initializers.Initializer]
Regularizer = Optional[tf_keras.regularizers.Regularizer]


def clone_initializer(initializer: Initializer) -> Initializer:
  """Keras initializers given as objects must not be shared between layers."""
  if isinstance(initializer, tf_keras.initializers.Initializer):
    return initializer.__class__.from_config(initializer.get_config())
  return initializer


@dataclasses.dataclass(frozen=True)
class LayerFactory:
  """Creates Keras layers with one model's shared settings.

  Attributes:
    activation: activation name (see `activations.get_activation`).
    use_sync_bn: synchronise BN statistics across replicas (large-batch training);
      the global batch's mean and variance, as one device computes them.
    norm_momentum: BN moving-average momentum (Keras convention: 0.99).
    norm_epsilon: BN epsilon.
    kernel_initializer: initializer name or object for conv kernels.
    kernel_regularizer: regularizer for conv kernels (L2 weight decay).
    bias_regularizer: regularizer for conv biases.
  """

  activation: str = 'relu'
  use_sync_bn: bool = False
  norm_momentum: float = 0.99
  norm_epsilon: float = 1e-3
  kernel_initializer: Initializer = 'VarianceScaling'
  kernel_regularizer: Regularizer = None
  bias_regularizer: Regularizer = None

  def __post_init__(self):
    activations.get_activation(self.activation)  # Fails early on a bad name.

  @classmethod
  def from_arguments(cls, arguments: Mapping[str, Any], **overrides: Any) -> 'LayerFactory':
    """The factory of a constructor's arguments: those named like its fields.

    Args:
      arguments: e.g. a layer constructor's `locals()`; other keys are ignored.
      **overrides: field values that replace or add to those in arguments.
    """
    settings = {
      field.name: arguments[field.name]
      for field in dataclasses.fields(cls)
      if field.name in arguments
    }
    return cls(**{**settings, **overrides})

  def conv(
    self,
    filters: int,
    kernel_size: int,
    strides: int = 1,
    use_bias: bool = False,
    name: Optional[str] = None,
    **kwargs: Any,
  ) -> tf_keras.layers.Conv2D:
    return tf_keras.layers.Conv2D(
      filters=filters,
      kernel_size=kernel_size,
      strides=strides,
      padding='same',
      use_bias=use_bias,
      kernel_initializer=clone_initializer(self.kernel_initializer),
      kernel_regularizer=self.kernel_regularizer,
      bias_regularizer=self.bias_regularizer,
      name=name,
      **kwargs,
    )

  def depthwise_conv(
    self, kernel_size: int, strides: int = 1, regularize: bool = False, name: Optional[str] = None
  ) -> tf_keras.layers.DepthwiseConv2D:
    return tf_keras.layers.DepthwiseConv2D(
      kernel_size=kernel_size,
      strides=strides,
      padding='same',
      use_bias=False,
      depthwise_initializer=clone_initializer(self.kernel_initializer),
      depthwise_regularizer=self.kernel_regularizer if regularize else None,
      bias_regularizer=self.bias_regularizer,
      name=name,
    )

  def norm(self, name: Optional[str] = None) -> tf_keras.layers.BatchNormalization:
    # Ours: its synchronized statistics equal one device's (see batch_norm.py).
    return batch_norm.BatchNormalization(
      axis=-1,
      momentum=self.norm_momentum,
      epsilon=self.norm_epsilon,
      synchronized=self.use_sync_bn,
      name=name,
    )

  def activation_fn(self, name: Optional[str] = None):
    """The activation as a plain function (for use inside a layer's call)."""
    return activations.get_activation(name or self.activation)

  def activation_layer(self, name: Optional[str] = None) -> tf_keras.layers.Layer:
    """The activation as a Keras layer (for functional graphs)."""
    return tf_keras.layers.Activation(self.activation_fn(name))

  def conv_norm_act(
    self,
    x: tf.Tensor,
    filters: int,
    kernel_size: int,
    strides: int = 1,
    use_activation: bool = True,
  ) -> tf.Tensor:
    """Applies conv -> BN [-> activation] to a functional-graph tensor.

    Args:
      x: [batch, height, width, channels].
      filters: output channels.
      kernel_size: square kernel size.
      strides: conv stride ('same' padding: output size is ceil(size / stride)).
      use_activation: whether to apply the activation after BN.

    Returns:
      [batch, ceil(height / strides), ceil(width / strides), filters].
    """
    x = self.conv(filters, kernel_size, strides)(x)
    x = self.norm()(x)
    if use_activation:
      x = self.activation_layer()(x)
    return x

  def layer_kwargs(self) -> dict:
    """The settings as keyword arguments of our blocks' constructors."""
    return dict(
      activation=self.activation,
      use_sync_bn=self.use_sync_bn,
      norm_momentum=self.norm_momentum,
      norm_epsilon=self.norm_epsilon,
      kernel_initializer=self.kernel_initializer,
      kernel_regularizer=self.kernel_regularizer,
      bias_regularizer=self.bias_regularizer,
    )

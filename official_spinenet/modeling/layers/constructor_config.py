"""One get_config / from_config scheme for the package's Keras layers and models.

Every layer and model of the package is rebuilt from its constructor arguments:
`get_config` returns them, with the Keras objects among them (initializers,
regularizers, sub-models) serialized, and `from_config` turns those back and calls
the constructor. `ConstructorConfig` does both for every class:

  @tf_keras.utils.register_keras_serializable(package='official_spinenet')
  class MyLayer(constructor_config.ConstructorConfig, tf_keras.layers.Layer):
    CONFIG_INCLUDES_BASE = True  # A layer: name, trainable, dtype round-trip too.

    def __init__(self, filters, kernel_regularizer=None, **kwargs):
      super().__init__(**kwargs)
      self._store_config(locals())
"""

import copy
import functools
import inspect
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

import tf_keras

from official_spinenet.utils import tracking

# Serializers pass through what is serialized already (a name, a config dict): a
# constructor may be given either.


def serialize_initializer(initializer):
  if isinstance(initializer, (str, dict)):
    return initializer
  return tf_keras.initializers.serialize(initializer)


def deserialize_initializer(config, custom_objects: Optional[dict] = None):
  if isinstance(config, (str, tf_keras.initializers.Initializer)):
    return config
  return tf_keras.initializers.deserialize(config, custom_objects=custom_objects)


def serialize_regularizer(regularizer):
  if isinstance(regularizer, dict):
    return regularizer
  return tf_keras.regularizers.serialize(regularizer)


def deserialize_regularizer(config, custom_objects: Optional[dict] = None):
  if isinstance(config, tf_keras.regularizers.Regularizer):
    return config
  return tf_keras.regularizers.deserialize(config, custom_objects=custom_objects)


def serialize_layer(layer):
  return tf_keras.layers.serialize(layer)


def deserialize_layer(config, custom_objects: Optional[dict] = None):
  if isinstance(config, tf_keras.layers.Layer):
    return config
  return tf_keras.layers.deserialize(config, custom_objects=custom_objects)


# (serialize, deserialize(config, custom_objects)) of one kind of Keras object.
Serializer = Tuple[Callable[[Any], Any], Callable[[Any, Optional[dict]], Any]]
INITIALIZER: Serializer = (serialize_initializer, deserialize_initializer)
REGULARIZER: Serializer = (serialize_regularizer, deserialize_regularizer)
LAYER: Serializer = (serialize_layer, deserialize_layer)
# The Keras objects among the `conv_norm_act.LayerFactory` settings most classes take.
FACTORY_SERIALIZERS = {
  'kernel_initializer': INITIALIZER,
  'kernel_regularizer': REGULARIZER,
  'bias_regularizer': REGULARIZER,
}


@functools.cache
def _parameter_names(cls: type) -> frozenset:
  """The named parameters of cls.__init__ (not self, *args or **kwargs)."""
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  return frozenset(
    p.name
    for p in inspect.signature(cls.__init__).parameters.values()
    if p.kind in named and p.name != 'self'
  )


class ConstructorConfig:
  """Mixin: get_config / from_config from the stored constructor arguments.

  List it before the Keras base class. `__init__` calls `self._store_config(
  locals())` once (a model before building anything, a layer after
  `super().__init__`); `_config_dict` then holds the arguments as given.

  Class attributes:
    CONFIG_SERIALIZERS: argument name -> (serialize, deserialize) for the arguments
      that may hold Keras objects; None passes through.
    CONFIG_INCLUDES_BASE: get_config starts from the Keras base config (name,
      trainable, dtype): True for layers. Models return their arguments only.
  """

  CONFIG_SERIALIZERS: ClassVar[Mapping[str, Serializer]] = FACTORY_SERIALIZERS
  CONFIG_INCLUDES_BASE: ClassVar[bool] = False

  def _store_config(self, arguments: Mapping[str, Any], **normalized: Any) -> None:
    """Stores the constructor arguments as the config.

    Args:
      arguments: the constructor's `locals()` (or another mapping holding its
        arguments); only the names of type(self).__init__'s parameters are kept,
        so a base class may store a subclass constructor's arguments.
      **normalized: arguments to store in another form than given (e.g. specs as
        dicts, an input shape as a list).
    """
    names = _parameter_names(type(self))
    config = {key: value for key, value in arguments.items() if key in names}
    config.update(normalized)
    # Untracked: Keras would wrap a dict attribute and track the layers in it.
    self._stored_config = tracking.Untracked(config)

  def _update_config(self, **changes: Any) -> None:
    self._stored_config.value.update(changes)

  @property
  def _config_dict(self) -> Dict[str, Any]:
    """The stored constructor arguments (Keras objects as given, not serialized)."""
    return self._stored_config.value

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config() if self.CONFIG_INCLUDES_BASE else {}
    for key, value in self._config_dict.items():
      if key in self.CONFIG_SERIALIZERS and value is not None:
        config[key] = self.CONFIG_SERIALIZERS[key][0](value)
      else:
        config[key] = copy.deepcopy(value)
    return config

  @classmethod
  def from_config(cls, config: Mapping[str, Any], custom_objects: Optional[dict] = None):
    config = dict(config)
    for key, (_, deserialize) in cls.CONFIG_SERIALIZERS.items():
      if config.get(key) is not None:
        config[key] = deserialize(config[key], custom_objects)
    return cls(**config)

"""The image-classification head of SpineNet (Du et al., CVPR 2020, Sec. 5 and Appendix).

SpineNet classifies from all its endpoints, not only the coarsest one: the paper's
head ('feature_fusion') upsamples P3..P7 with nearest neighbours to P3's size, sums
and averages them, then applies global average pooling, dropout and one dense
layer (kernel N(0, 0.01), zero bias). 'top_level' is tf-models-official's
classifier head instead: global average pooling of P{max_level} only.

The fusion resizes each level to P3's actual size, so it also works when the image
size is not a multiple of 2^max_level (224 px: P3 28 x 28, P7 2 x 2); where the
sizes divide, the resize is the exact integer-factor upsampling.
"""

from typing import Dict, Mapping, Optional

import tensorflow as tf
import tf_keras

from official_spinenet.modeling import topology
from official_spinenet.modeling.layers import constructor_config
from official_spinenet.modeling.layers import resample

FUSIONS = ('feature_fusion', 'top_level')
DENSE_KERNEL_STDDEV = 0.01


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class ClassificationHead(constructor_config.ConstructorConfig, tf_keras.layers.Layer):
  """Endpoint features -> class logits.

  Input: dict str(level) -> [B, H_l, W_l, C] (levels min_level..max_level for
  'feature_fusion', max_level for 'top_level'; other levels are ignored).
  Output: logits [B, num_classes], float32 whatever the dtype policy.
  """

  CONFIG_INCLUDES_BASE = True
  CONFIG_SERIALIZERS = {'kernel_regularizer': constructor_config.REGULARIZER}

  def __init__(
    self,
    num_classes: int,
    min_level: int = 3,
    max_level: int = 7,
    fusion: str = 'feature_fusion',
    dropout_rate: float = 0.0,
    kernel_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
    **kwargs,
  ):
    """Initializes the head.

    Args:
      num_classes: number of classes (ImageNet: 1000 or 1001).
      min_level: lowest endpoint level fused ('feature_fusion').
      max_level: highest endpoint level; the one pooled by 'top_level'.
      fusion: one of FUSIONS.
      dropout_rate: dropout before the dense layer, in [0, 1).
      kernel_regularizer: regularizer of the dense kernel (L2 weight decay).
      **kwargs: passed to tf_keras.layers.Layer.

    Raises:
      ValueError: for a bad fusion, level range, class count or dropout rate.
    """
    super().__init__(**kwargs)
    self._store_config(locals())
    if fusion not in FUSIONS:
      raise ValueError(f'ClassificationHead fusion must be one of {FUSIONS}, got {fusion!r}.')
    if not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(f'num_classes must be an int >= 1, got {num_classes!r}.')
    if min_level < 1:
      raise ValueError(f'min_level must be >= 1, got {min_level}.')
    topology.check_level_order(min_level, max_level)
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got {dropout_rate}.')
    self._levels = list(range(min_level, max_level + 1)) if fusion == FUSIONS[0] else [max_level]
    self._dropout = tf_keras.layers.Dropout(dropout_rate)
    # float32 so that the logits (and the softmax after them) keep full precision
    # under a mixed-precision policy.
    self._classifier = tf_keras.layers.Dense(
      num_classes,
      kernel_initializer=tf_keras.initializers.RandomNormal(stddev=DENSE_KERNEL_STDDEV),
      bias_initializer='zeros',
      kernel_regularizer=kernel_regularizer,
      dtype='float32',
      name='logits',
    )

  def _fuse(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The levels, resized to the lowest one's size and averaged: [B, H_min, W_min, C]."""
    maps = [features[str(level)] for level in self._levels]
    size = tf.shape(maps[0])[1:3]
    resized = [maps[0]] + [resample.resize_nearest(x, size) for x in maps[1:]]
    if len(resized) == 1:
      return resized[0]
    return tf.add_n(resized) / tf.cast(len(resized), resized[0].dtype)

  def call(self, features: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    """Logits [B, num_classes] (float32) of features str(level) -> [B, H_l, W_l, C]."""
    missing = [str(level) for level in self._levels if str(level) not in features]
    if missing:
      raise ValueError(
        f'ClassificationHead ({self._config_dict["fusion"]}) needs features for levels '
        f'{[str(level) for level in self._levels]}; missing {missing} (got {sorted(features)}).'
      )
    channels = {features[str(level)].shape[-1] for level in self._levels}
    if len(channels) > 1:
      raise ValueError(f'feature_fusion needs one channel count on all levels, got {channels}.')
    # Pool in float32: a mean over thousands of float16 values loses digits.
    pooled = tf.reduce_mean(tf.cast(self._fuse(features), tf.float32), axis=[1, 2])
    return self._classifier(self._dropout(pooled, training=training))

"""The RetinaNet head (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Two towers of `num_convs` 3x3 convs, one for classification and one for box
regression, run on every pyramid level. The convs and the final predictors are
shared across levels; each conv is followed by a batch norm of its own per level
(as in SpineNet's head and TF Model Garden's `RetinaNetHead`), then the activation.

Layout, initializers and parameter count follow Model Garden's `RetinaNetHead`
(with `share_level_convs=True` and no attribute heads), and so do the sub-layer
attribute names and their creation order, so its checkpoints map onto this layer:

  _cls_convs[i]            'classnet-conv_{i}'
  _cls_norms[level_idx][i] 'classnet-conv-norm_{level}_{i}'
  _classifier              'scores'
  _box_convs[i]            'boxnet-conv_{i}'
  _box_norms[level_idx][i] 'boxnet-conv-norm_{level}_{i}'
  _box_regressor           'boxes'

With `use_separable_conv` (SpineNet-Mobile's head) every conv, predictors included,
is a `SeparableConv2D` (depth multiplier 1, with bias). As in Model Garden, the
separable tower convs then keep Keras' default (Glorot uniform) kernel
initializers and no kernel regularizer, and the separable predictors use
N(0, 0.03) for both kernels with `kernel_regularizer` on both.
"""

import dataclasses
import math
from typing import Dict, Mapping, Optional, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet.modeling import topology
from official_spinenet.modeling.layers import constructor_config
from official_spinenet.modeling.layers import conv_norm_act

# Focal loss prior: the classifier starts out predicting foreground with this
# probability, so the many background anchors do not swamp the first steps.
PRIOR_PROBABILITY = 0.01
HEAD_KERNEL_STDDEV = 0.01
PREDICTOR_KERNEL_STDDEV = 1e-5
SEPARABLE_PREDICTOR_KERNEL_STDDEV = 0.03


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class RetinaNetHead(constructor_config.ConstructorConfig, tf_keras.layers.Layer):
  """RetinaNet class and box head, shared across levels min_level..max_level.

  Input: dict str(level) -> [B, H_l, W_l, C] for every level in [min_level, max_level].
  Output: (class_outputs, box_outputs), dicts str(level) ->
  [B, H_l, W_l, num_classes * num_anchors_per_location] and
  [B, H_l, W_l, num_params_per_anchor * num_anchors_per_location].
  """

  CONFIG_INCLUDES_BASE = True

  def __init__(
    self,
    min_level: int = 3,
    max_level: int = 7,
    num_classes: int = 91,
    num_anchors_per_location: int = 9,
    num_convs: int = 4,
    num_filters: int = 256,
    use_separable_conv: bool = False,
    activation: str = 'relu',
    use_sync_bn: bool = False,
    norm_momentum: float = 0.99,
    norm_epsilon: float = 0.001,
    kernel_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
    bias_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
    num_params_per_anchor: int = 4,
    **kwargs,
  ):
    """Initializes the head.

    Args:
      min_level: lowest pyramid level.
      max_level: highest pyramid level.
      num_classes: classes per anchor (COCO: 91, background included).
      num_anchors_per_location: anchors per feature-map location.
      num_convs: convs in each tower (0 allowed: predictors on the features).
      num_filters: channels of the tower convs.
      use_separable_conv: SeparableConv2D for the towers and the predictors.
      activation: activation name after each tower batch norm.
      use_sync_bn: synchronise BN statistics across replicas.
      norm_momentum: BN momentum.
      norm_epsilon: BN epsilon.
      kernel_regularizer: conv kernel regularizer (L2 weight decay).
      bias_regularizer: conv bias regularizer.
      num_params_per_anchor: box regression outputs per anchor (4).
      **kwargs: passed to tf_keras.layers.Layer.
    """
    super().__init__(**kwargs)
    self._store_config(locals())
    topology.check_level_order(min_level, max_level)
    for key, value, lower in (
      ('num_classes', num_classes, 1),
      ('num_anchors_per_location', num_anchors_per_location, 1),
      ('num_convs', num_convs, 0),
      ('num_filters', num_filters, 1),
      ('num_params_per_anchor', num_params_per_anchor, 1),
    ):
      if not isinstance(value, int) or value < lower:
        raise ValueError(f'{key} must be an int >= {lower}, got {value!r}.')
    self._factory = conv_norm_act.LayerFactory.from_arguments(
      locals(), kernel_initializer=tf_keras.initializers.RandomNormal(stddev=HEAD_KERNEL_STDDEV)
    )
    self._activation_fn = self._factory.activation_fn()

  @property
  def levels(self) -> Tuple[int, ...]:
    return tuple(range(self._config_dict['min_level'], self._config_dict['max_level'] + 1))

  def _tower_conv(self, name: str) -> tf_keras.layers.Layer:
    filters = self._config_dict['num_filters']
    if self._config_dict['use_separable_conv']:
      return tf_keras.layers.SeparableConv2D(
        filters=filters,
        kernel_size=3,
        padding='same',
        bias_initializer='zeros',
        bias_regularizer=self._config_dict['bias_regularizer'],
        name=name,
      )
    return self._factory.conv(filters, 3, use_bias=True, bias_initializer='zeros', name=name)

  def _predictor(self, filters: int, bias_value: float, name: str) -> tf_keras.layers.Layer:
    bias_initializer = tf_keras.initializers.Constant(bias_value)
    regularizer = self._config_dict['kernel_regularizer']
    if self._config_dict['use_separable_conv']:
      init = lambda: tf_keras.initializers.RandomNormal(stddev=SEPARABLE_PREDICTOR_KERNEL_STDDEV)
      return tf_keras.layers.SeparableConv2D(
        filters=filters,
        kernel_size=3,
        padding='same',
        depthwise_initializer=init(),
        pointwise_initializer=init(),
        depthwise_regularizer=regularizer,
        pointwise_regularizer=regularizer,
        bias_initializer=bias_initializer,
        bias_regularizer=self._config_dict['bias_regularizer'],
        name=name,
      )
    factory = dataclasses.replace(
      self._factory,
      kernel_initializer=tf_keras.initializers.RandomNormal(stddev=PREDICTOR_KERNEL_STDDEV),
    )
    return factory.conv(filters, 3, use_bias=True, bias_initializer=bias_initializer, name=name)

  def _build_tower(
    self, net_name: str, predictor_name: str, predictor_filters: int, bias_value: float
  ):
    """Shared convs, per-level norms, then the shared predictor (Model Garden order)."""
    convs, norms = [], []
    for level in self.levels:
      level_norms = []
      for i in range(self._config_dict['num_convs']):
        if level == self._config_dict['min_level']:
          convs.append(self._tower_conv(f'{net_name}-conv_{i}'))
        level_norms.append(self._factory.norm(name=f'{net_name}-conv-norm_{level}_{i}'))
      norms.append(level_norms)
    predictor = self._predictor(predictor_filters, bias_value, predictor_name)
    return convs, norms, predictor

  def build(self, input_shape):
    anchors = self._config_dict['num_anchors_per_location']
    prior_bias = -math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    self._cls_convs, self._cls_norms, self._classifier = self._build_tower(
      'classnet', 'scores', self._config_dict['num_classes'] * anchors, prior_bias
    )
    self._box_convs, self._box_norms, self._box_regressor = self._build_tower(
      'boxnet', 'boxes', self._config_dict['num_params_per_anchor'] * anchors, 0.0
    )
    super().build(input_shape)

  def _apply_tower(self, x, convs, norms, training):
    for conv, norm in zip(convs, norms):
      x = self._activation_fn(norm(conv(x), training=training))
    return x

  def call(
    self, features: Mapping[str, tf.Tensor], training=None
  ) -> Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]]:
    """Runs both towers and predictors on every level.

    Args:
      features: dict str(level) -> [B, H_l, W_l, C]; extra levels are ignored.
      training: BN mode.

    Returns:
      (class_outputs, box_outputs): dicts str(level) -> raw logits
      [B, H_l, W_l, num_classes * A] and box deltas [B, H_l, W_l, 4 * A].
    """
    missing = [str(level) for level in self.levels if str(level) not in features]
    if missing:
      raise ValueError(
        f'RetinaNetHead needs features for levels {list(map(str, self.levels))}; '
        f'missing {missing} (got {sorted(features)}).'
      )
    scores, boxes = {}, {}
    for i, level in enumerate(self.levels):
      x = features[str(level)]
      scores[str(level)] = self._classifier(
        self._apply_tower(x, self._cls_convs, self._cls_norms[i], training)
      )
      boxes[str(level)] = self._box_regressor(
        self._apply_tower(x, self._box_convs, self._box_norms[i], training)
      )
    return scores, boxes

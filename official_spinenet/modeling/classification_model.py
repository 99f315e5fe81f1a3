"""An image classifier: a backbone and the classification head (SpineNet Sec. 5).

The backbone (SpineNet, SpineNet-Mobile or any model mapping images to a dict
str(level) -> features) feeds `ClassificationHead`, which fuses its endpoints (the
paper's head) or pools the top level only, and returns the logits. The checkpoint
names the backbone 'backbone' as the detection models do, so a classification-
trained backbone initialises a RetinaNet or Mask R-CNN backbone.
"""

from typing import Any, Dict

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.heads import classification_head
from official_spinenet.modeling.layers import constructor_config


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class ClassificationModel(constructor_config.ConstructorConfig, tf_keras.Model):
  """Backbone -> ClassificationHead.

  `call(images [B, H, W, 3] normalised, training)` returns logits [B, num_classes]
  (float32 under any dtype policy).
  """

  CONFIG_SERIALIZERS = {key: constructor_config.LAYER for key in ('backbone', 'head')}

  def __init__(
    self, backbone: tf_keras.Model, head: classification_head.ClassificationHead, **kwargs
  ):
    """Initializes the model.

    Args:
      backbone: maps images to dict str(level) -> [B, H_l, W_l, C].
      head: the ClassificationHead on the backbone's endpoints.
      **kwargs: passed to tf_keras.Model.
    """
    self._store_config(locals())
    super().__init__(**kwargs)
    self._backbone = backbone
    self._head = head

  @property
  def backbone(self) -> tf_keras.Model:
    return self._backbone

  @property
  def head(self) -> classification_head.ClassificationHead:
    return self._head

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    """Sub-modules by checkpoint name: `Checkpoint(backbone=...)` restores into backbone."""
    return dict(backbone=self._backbone, head=self._head)

  def call(self, images, training=None) -> tf.Tensor:
    return self._head(self._backbone(images, training=training), training=training)

"""RetinaNet losses, computed as Model Garden's RetinaNet task does.

Focal loss on one-hot classes and Huber loss on box deltas, both SUM-reduced with
per-anchor weights divided by (number of positive anchors in the batch + 1);
model loss = cls_loss + box_loss_weight * box_loss. The caller adds weight decay
(sum of model.losses).

Model Garden's FocalLoss and multi_level_flatten are loaded (`model_garden.load`)
when the loss is first computed, not with this module.
"""

import collections
from typing import Any, Dict, Mapping

import tensorflow as tf
import tf_keras

from official_spinenet import model_garden

FOCAL_LOSS_ALPHA = 0.25
FOCAL_LOSS_GAMMA = 1.5
HUBER_LOSS_DELTA = 0.1
BOX_LOSS_WEIGHT = 50.0


def _ordered(tensors: Mapping[str, tf.Tensor]):
  return collections.OrderedDict((k, tensors[k]) for k in sorted(tensors, key=int))


def retinanet_loss(
  outputs: Mapping[str, Any],
  labels: Mapping[str, Any],
  num_classes: int,
  focal_loss_alpha: float = FOCAL_LOSS_ALPHA,
  focal_loss_gamma: float = FOCAL_LOSS_GAMMA,
  huber_loss_delta: float = HUBER_LOSS_DELTA,
  box_loss_weight: float = BOX_LOSS_WEIGHT,
  sum_positives_across_replicas: bool = True,
) -> Dict[str, tf.Tensor]:
  """RetinaNet detection loss for one (per-replica) batch.

  Args:
    outputs: {'cls_outputs': {str(level): [B, H, W, num_classes * A]},
      'box_outputs': {str(level): [B, H, W, 4 * A]}}.
    labels: the retinanet parser's labels: 'cls_targets' {level: [B, H, W, A]},
      'box_targets' {level: [B, H, W, 4 * A]}, 'cls_weights' and 'box_weights'
      [B, num_anchors].
    num_classes: classes including background.
    focal_loss_alpha, focal_loss_gamma: focal loss parameters.
    huber_loss_delta: Huber loss delta on the encoded box deltas.
    box_loss_weight: weight of the box loss in the total.
    sum_positives_across_replicas: under a tf.distribute strategy, divide by the
      positives of the global batch (all-reduced), so the per-replica losses add
      up to exactly the loss one device computes on the whole batch (the trainer
      sums gradients over replicas). Without a strategy this changes nothing.

  Returns:
    dict(total_loss=cls_loss + box_loss_weight * box_loss, cls_loss, box_loss);
    scalars, float32.
  """
  focal_loss = model_garden.load('focal_loss')
  loss_utils = model_garden.load('loss_utils')
  cls_loss_fn = focal_loss.FocalLoss(
    alpha=focal_loss_alpha, gamma=focal_loss_gamma, reduction=tf_keras.losses.Reduction.SUM
  )
  box_loss_fn = tf_keras.losses.Huber(huber_loss_delta, reduction=tf_keras.losses.Reduction.SUM)

  cls_weights = tf.cast(labels['cls_weights'], tf.float32)
  box_weights = tf.cast(labels['box_weights'], tf.float32)
  # Positives over the whole batch; +1 keeps the loss finite without positives.
  num_positives = tf.reduce_sum(box_weights)
  replica_context = tf.distribute.get_replica_context()
  if sum_positives_across_replicas and replica_context is not None:
    num_positives = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, num_positives)
  num_positives += 1.0
  cls_weights = cls_weights / num_positives
  box_weights = box_weights / num_positives

  y_true_cls = loss_utils.multi_level_flatten(_ordered(labels['cls_targets']), last_dim=None)
  y_true_cls = tf.one_hot(tf.cast(y_true_cls, tf.int32), num_classes)
  y_pred_cls = tf.cast(
    loss_utils.multi_level_flatten(_ordered(outputs['cls_outputs']), last_dim=num_classes),
    tf.float32,
  )
  y_true_box = tf.cast(
    loss_utils.multi_level_flatten(_ordered(labels['box_targets']), last_dim=4), tf.float32
  )
  y_pred_box = tf.cast(
    loss_utils.multi_level_flatten(_ordered(outputs['box_outputs']), last_dim=4), tf.float32
  )

  cls_loss = cls_loss_fn(y_true=y_true_cls, y_pred=y_pred_cls, sample_weight=cls_weights)
  box_loss = box_loss_fn(y_true=y_true_box, y_pred=y_pred_box, sample_weight=box_weights)
  total_loss = cls_loss + box_loss_weight * box_loss
  return {'total_loss': total_loss, 'cls_loss': cls_loss, 'box_loss': box_loss}

"""The image-classification task: a backbone + ClassificationHead, trained on TFRecords.

SpineNet Sec. 5.1 (ImageNet, iNaturalist-2017) trains the backbone with the
paper's head (all endpoints fused, see `modeling.heads.classification_head`) on
softmax cross-entropy, with label smoothing (0.1) in its improved protocol, and
L2 weight decay, and reports top-1 / top-5 accuracy. The records are
`image/encoded` + `image/class/label` (`data.image_folder_tfrecord` writes them
from a folder per class); `data.classification_input` reads them.

Losses, per replica (the trainer sums them over replicas, see
`base_task.Task.build_losses`):
  cls_loss    sum over the replica's examples of the smoothed cross-entropy,
              divided by the global batch;
  l2_loss     l2_weight_decay / 2 * sum(w^2) over kernels / replicas, as the
              detection tasks (Model Garden's tf.nn.l2_loss convention);
  total_loss  cls_loss + l2_loss.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from official_spinenet.data import classification_input
from official_spinenet.data import image_folder_tfrecord
from official_spinenet.modeling import classification_model
from official_spinenet.modeling.heads import classification_head
from official_spinenet.tasks import base_task
from official_spinenet.tasks import retinanet_task
from official_spinenet.utils import image_sizes

ModelBuilder = retinanet_task.ModelBuilder


def smoothed_cross_entropy(
  logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0
) -> tf.Tensor:
  """Per-example softmax cross-entropy against label-smoothed one-hot targets.

  The target of class c is (1 - label_smoothing) * [c == label] + label_smoothing /
  num_classes (Szegedy et al. 2016, Sec. 7; tf_keras' and Model Garden's convention).

  Args:
    logits: [B, num_classes].
    labels: [B] integer class indices.
    label_smoothing: in [0, 1).

  Returns:
    [B] float32 losses.
  """
  logits = tf.cast(logits, tf.float32)
  num_classes = tf.shape(logits)[-1]
  targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
  targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(num_classes, tf.float32)
  return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


class ClassificationEvaluator(base_task.Evaluator):
  """Top-1 / top-k accuracy and the mean cross-entropy over everything seen.

  Expects outputs 'top_k_classes' [B, >= k] (classes by decreasing score),
  'labels' [B] and 'cls_loss' [B] (per-example loss). Metrics: 'top_1_accuracy',
  'top_{k}_accuracy' (k > 1) as fractions, and 'cls_loss', named as the training
  loss so that TensorBoard draws the train and eval curves in one chart.
  """

  def __init__(self, top_k: int):
    self._k = top_k
    self._examples = 0
    self._hits = np.zeros([2], np.int64)  # top-1, top-k
    self._loss_sum = 0.0

  def update(self, outputs: Mapping[str, Any]) -> None:
    classes = np.asarray(outputs['top_k_classes'])[:, : self._k]
    labels = np.asarray(outputs['labels']).reshape(-1, 1)
    hits = classes == labels
    self._hits += [hits[:, 0].sum(), hits.any(axis=1).sum()]
    self._examples += labels.shape[0]
    self._loss_sum += float(np.sum(outputs['cls_loss']))

  def result(self) -> Dict[str, float]:
    if not self._examples:
      raise ValueError('The evaluation saw no examples; is the eval split empty?')
    top_1, top_k = self._hits / self._examples
    metrics = {'top_1_accuracy': float(top_1), 'cls_loss': self._loss_sum / self._examples}
    if self._k > 1:
      metrics[f'top_{self._k}_accuracy'] = float(top_k)
    return metrics


class ClassificationTask(base_task.Task):
  """Image classification with any backbone that returns dict str(level) -> features."""

  loss_names = ('total_loss', 'cls_loss', 'l2_loss')

  def __init__(
    self,
    num_classes: int,
    image_size: Union[int, Sequence[int]],
    train_data: base_task.InputConfig,
    eval_data: Optional[base_task.InputConfig] = None,
    backbone: ModelBuilder = retinanet_task.default_backbone,
    min_level: int = 3,
    max_level: int = 7,
    fusion: str = 'feature_fusion',
    dropout_rate: float = 0.0,
    label_smoothing: float = 0.0,
    l2_weight_decay: float = 0.0,
    top_k: int = 5,
    class_names_file: Optional[str] = None,
    image_dtype: str = 'float32',
    crop_area_range: Sequence[float] = classification_input.CROP_AREA_RANGE,
  ):
    """Configures the task (nothing is built yet).

    Args:
      num_classes: number of classes (labels 0..num_classes-1; no background).
      image_size: model input (height, width) or an int (224: the paper's).
      train_data: training split (aug_scale_min / max do not apply: see
        crop_area_range).
      eval_data: evaluation split (None: no evaluation).
      backbone: builder called as backbone(input_specs=[None, H, W, 3],
        min_level=, max_level=, kernel_regularizer=) -> dict-output model.
      min_level, max_level: endpoint levels the head reads.
      fusion: the head's classification_head.FUSIONS entry ('feature_fusion':
        the paper's; 'top_level': pool P{max_level} only).
      dropout_rate: dropout before the classifier, in [0, 1).
      label_smoothing: in [0, 1) (the paper's improved protocol: 0.1).
      l2_weight_decay: loss l2_weight_decay / 2 * sum(w^2) on kernels (1e-4 in
        the paper's ImageNet protocol).
      top_k: the second accuracy reported (top_{k}_accuracy, k capped at
        num_classes).
      class_names_file: optional labels.txt (line i names label i).
      image_dtype: input image dtype ('bfloat16' / 'float16' under mixed precision).
      crop_area_range: (min, max) fraction of the image area of the training
        crop (0.08, 1.0: the Inception crop).
    """
    super().__init__(train_data, eval_data)
    self.num_classes = num_classes
    self.image_size = image_sizes.parse_image_size(image_size, 'ClassificationTask.image_size')
    self._backbone_fn = backbone
    self.min_level = min_level
    self.max_level = max_level
    self.fusion = fusion
    self.dropout_rate = dropout_rate
    self.label_smoothing = label_smoothing
    self.l2_weight_decay = l2_weight_decay
    self.top_k = min(top_k, num_classes)
    self.class_names_file = class_names_file
    self.image_dtype = image_dtype
    self.crop_area_range = tuple(crop_area_range)

  def validate(self, mode: str) -> None:
    self._check_settings()
    if self.class_names_file:
      names = self.class_names()
      if len(names) != self.num_classes:
        raise ValueError(
          f'ClassificationTask.class_names_file {self.class_names_file!r} names '
          f'{len(names)} classes but num_classes is {self.num_classes}.'
        )
    self._check_augmentation(mode)
    self.check_input_splits(mode)

  def _check_settings(self) -> None:
    """ValueError naming the first setting out of range."""
    low, high = (self.crop_area_range + (None, None))[:2]
    checks = (
      (self.num_classes >= 2, f'num_classes must be >= 2, got {self.num_classes}'),
      (
        0 < self.min_level <= self.max_level,
        f'need 0 < min_level <= max_level, got {self.min_level}, {self.max_level}',
      ),
      (
        self.fusion in classification_head.FUSIONS,
        f'fusion must be one of {classification_head.FUSIONS}, got {self.fusion!r}',
      ),
      (
        0.0 <= self.label_smoothing < 1.0,
        f'label_smoothing must be in [0, 1), got {self.label_smoothing}',
      ),
      (0.0 <= self.dropout_rate < 1.0, f'dropout_rate must be in [0, 1), got {self.dropout_rate}'),
      (self.l2_weight_decay >= 0, f'l2_weight_decay must be >= 0, got {self.l2_weight_decay}'),
      (self.top_k >= 1, f'top_k must be >= 1, got {self.top_k}'),
      (
        len(self.crop_area_range) == 2 and 0 < low <= high <= 1,
        f'crop_area_range must be (min, max) with 0 < min <= max <= 1, got {self.crop_area_range}',
      ),
    )
    for ok, message in checks:
      if not ok:
        raise ValueError(f'ClassificationTask.{message}.')

  def _check_augmentation(self, mode: str) -> None:
    for name, config in self.splits_read(mode):
      if (config.aug_scale_min, config.aug_scale_max) != (1.0, 1.0):
        raise ValueError(
          f'ClassificationTask.{name}.aug_scale_min / aug_scale_max do not apply to '
          'classification; the training crop is set by ClassificationTask.crop_area_range.'
        )

  def class_names(self) -> Optional[List[str]]:
    """The names in class_names_file (line i names label i), or None without one."""
    if not self.class_names_file:
      return None
    return image_folder_tfrecord.read_class_names(self.class_names_file)

  def build_model(self) -> classification_model.ClassificationModel:
    regularizer = self.kernel_regularizer()
    height, width = self.image_size
    levels = dict(min_level=self.min_level, max_level=self.max_level)
    backbone = self._backbone_fn(
      input_specs=[None, height, width, 3], kernel_regularizer=regularizer, **levels
    )
    head = classification_head.ClassificationHead(
      num_classes=self.num_classes,
      fusion=self.fusion,
      dropout_rate=self.dropout_rate,
      kernel_regularizer=regularizer,
      **levels,
    )
    model = classification_model.ClassificationModel(backbone=backbone, head=head)
    # Builds every weight now, so checkpoints restore and optimizers see them.
    model(tf.zeros([1, height, width, 3]), training=False)
    return model

  def build_inputs(
    self, is_training: bool, input_context: Optional[tf.distribute.InputContext] = None
  ) -> tf.data.Dataset:
    return classification_input.build_classification_dataset(
      **self.split_input_args(is_training, input_context),
      image_size=self.image_size,
      num_classes=self.num_classes,
      dtype=self.image_dtype,
      crop_area_range=self.crop_area_range,
    )

  def build_losses(self, outputs, labels, model) -> Dict[str, tf.Tensor]:
    """outputs: logits [b, num_classes]; labels: [b] of this replica's batch."""
    per_example = smoothed_cross_entropy(outputs, labels, self.label_smoothing)
    # Sum / (b x replicas): the replicas' shares add up to the global batch's mean.
    cls_loss = tf.nn.compute_average_loss(per_example)
    l2_loss = self.weight_decay_loss(model)
    return {'total_loss': cls_loss + l2_loss, 'cls_loss': cls_loss, 'l2_loss': l2_loss}

  def eval_outputs(self, model, inputs, labels) -> Dict[str, tf.Tensor]:
    logits = model(inputs, training=False)
    return {
      'top_k_classes': tf.math.top_k(logits, k=self.top_k).indices,
      'labels': labels,
      'cls_loss': smoothed_cross_entropy(logits, labels, self.label_smoothing),
    }

  def build_evaluator(self) -> base_task.Evaluator:
    return ClassificationEvaluator(self.top_k)

  def checkpoint_items(self, model: classification_model.ClassificationModel):
    return {'model': model, **model.checkpoint_items}

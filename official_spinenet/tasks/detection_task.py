"""What the detection tasks (RetinaNet, Mask R-CNN) share: sizes, checks, weight decay.

Both read COCO-style TFRecords, detect on pyramid levels min_level..max_level
of an image padded to a multiple of 2^max_level, decay weights with an L2 loss
(Model Garden's convention: `l2_weight_decay / 2 * sum(w^2)`) and evaluate COCO
AP with pycocotools.
"""

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.tasks import base_task
from official_spinenet.utils import image_sizes

DETECTION_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')


class DetectionTask(base_task.Task):
  """A task whose model detects objects on a feature pyramid."""

  def __init__(
    self,
    num_classes: int,
    image_size: Union[int, Sequence[int]],
    train_data: base_task.InputConfig,
    eval_data: Optional[base_task.InputConfig],
    min_level: int,
    max_level: int,
    l2_weight_decay: float,
    annotation_file: Optional[str],
    per_category_metrics: bool,
    image_dtype: str,
  ):
    super().__init__(train_data, eval_data)
    self.num_classes = num_classes
    self.image_size = image_sizes.parse_image_size(image_size, f'{self._name}.image_size')
    self.min_level = min_level
    self.max_level = max_level
    self.l2_weight_decay = l2_weight_decay
    self.annotation_file = annotation_file
    self.per_category_metrics = per_category_metrics
    self.image_dtype = image_dtype

  def validate(self, mode: str) -> None:
    stride = 2**self.max_level
    if any(s % stride for s in self.image_size):
      fixed = tuple(int(math.ceil(s / stride) * stride) for s in self.image_size)
      raise ValueError(
        f'{self._name}.image_size {self.image_size} must be a multiple of 2^max_level = '
        f'{stride} in both dimensions (max_level={self.max_level}); use e.g. {fixed}.'
      )
    if not 0 < self.min_level <= self.max_level:
      raise ValueError(f'Need 0 < min_level <= max_level, got {self.min_level}, {self.max_level}.')
    if self.num_classes < 2:
      raise ValueError(
        f'{self._name}.num_classes counts the background class too and must be '
        f'>= 2, got {self.num_classes}.'
      )
    self.check_input_splits(mode)

  def splits_read(self, mode: str):
    """The base task's splits; evaluation also needs annotation_file to exist if set."""
    splits = super().splits_read(mode)
    if any(name == 'eval_data' for name, _ in splits):
      if self.annotation_file and not tf.io.gfile.exists(self.annotation_file):
        raise ValueError(f'{self._name}.annotation_file {self.annotation_file!r} does not exist.')
    return splits

  def split_input_args(
    self, is_training: bool, input_context: Optional[tf.distribute.InputContext]
  ) -> Dict[str, Any]:
    """The input-pipeline arguments every detection task passes for one split."""
    config = self.train_data if is_training else self.eval_data
    return dict(
      super().split_input_args(is_training, input_context),
      image_size=self.image_size,
      min_level=self.min_level,
      max_level=self.max_level,
      aug_scale_min=config.aug_scale_min,
      aug_scale_max=config.aug_scale_max,
      dtype=self.image_dtype,
    )

  def build_pyramid(
    self,
    backbone_fn: Callable[..., tf_keras.Model],
    decoder_fn: Optional[Callable[..., tf_keras.Model]],
    kernel_regularizer: Optional[tf_keras.regularizers.Regularizer],
  ) -> Tuple[tf_keras.Model, Optional[tf_keras.Model]]:
    """The backbone (and optional decoder, e.g. NAS-FPN) producing levels min..max.

    backbone_fn is called as backbone_fn(input_specs=[None, H, W, 3], min_level=,
    max_level=, kernel_regularizer=), decoder_fn as decoder_fn(input_specs=
    backbone.output_specs, min_level=, max_level=, kernel_regularizer=).
    """
    height, width = self.image_size
    levels = dict(min_level=self.min_level, max_level=self.max_level)
    backbone = backbone_fn(
      input_specs=[None, height, width, 3], kernel_regularizer=kernel_regularizer, **levels
    )
    decoder = None
    if decoder_fn is not None:
      decoder = decoder_fn(
        input_specs=backbone.output_specs, kernel_regularizer=kernel_regularizer, **levels
      )
    return backbone, decoder


class DetectionEvaluator(base_task.Evaluator):
  """COCO box (and, with include_mask, segm) metrics over a task's eval_outputs.

  Expects detection_boxes / scores / classes / num_detections (and
  detection_masks [B, N, M, M] crop probabilities), image_info, source_id, and
  without an annotation file the parser's 'groundtruths/<key>' tensors.
  """

  def __init__(
    self,
    annotation_file: Optional[str],
    per_category_metrics: bool = True,
    include_mask: bool = False,
    eval_file_pattern: Optional[str] = None,
  ):
    """Box metrics take their ground truth from the annotation file or the eval
    batches; mask metrics from the annotation file or, without one, from the
    full-resolution masks of the eval records (eval_file_pattern), scanned now."""
    from official_spinenet.evaluation import coco_evaluator  # pylint: disable=g-import-not-at-top

    self._keys = DETECTION_KEYS + (('detection_masks',) if include_mask else ())
    if include_mask and not annotation_file:
      self._coco = coco_evaluator.COCOEvaluator.from_tfrecords(
        eval_file_pattern, per_category_metrics=per_category_metrics, include_mask=True
      )
    else:
      self._coco = coco_evaluator.COCOEvaluator(
        annotation_file=annotation_file,
        per_category_metrics=per_category_metrics,
        include_mask=include_mask,
      )
    self._groundtruths_from_batches = not annotation_file and not include_mask

  def update(self, outputs: Dict[str, Any]) -> None:
    groundtruths = {
      key.split('/', 1)[1]: np.asarray(value)
      for key, value in outputs.items()
      if key.startswith('groundtruths/') and self._groundtruths_from_batches
    }
    self._coco.update(
      {key: np.asarray(outputs[key]) for key in self._keys},
      np.asarray(outputs['image_info']),
      np.asarray(outputs['source_id']),
      groundtruths=groundtruths or None,
    )

  def result(self) -> Dict[str, float]:
    return self._coco.result()

  def write_detections_json(self, path: str) -> None:
    self._coco.write_detections_json(path)

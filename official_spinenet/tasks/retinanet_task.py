"""The RetinaNet task: a backbone (+ decoder) + RetinaNet head, trained on TFRecords.

SpineNet Sec. 4 / NAS-FPN Sec. 3 evaluate their pyramids in RetinaNet: anchors of
`num_scales` octave scales x `aspect_ratios` per location on levels
min_level..max_level, focal loss for classes, Huber loss for boxes, weight decay.
The backbone, decoder and head are passed as builder callables so that gin (in
`configurables.py`) can choose and configure them while this module stays
gin-free.
"""

import math
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.data import retinanet_input
from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.tasks import base_task
from official_spinenet.tasks import retinanet_losses
from official_spinenet.utils import image_sizes

ModelBuilder = Callable[..., tf_keras.layers.Layer]


def default_backbone(**kwargs) -> tf_keras.Model:
  """SpineNet-49 (the builder used when a configuration names none)."""
  return factory.build_backbone('spinenet', '49', **kwargs)


class RetinaNetTask(base_task.Task):
  """RetinaNet with any backbone that returns dict str(level) -> features."""

  loss_names = ('total_loss', 'cls_loss', 'box_loss', 'model_loss', 'l2_loss')

  def __init__(
    self,
    num_classes: int,
    image_size: Union[int, Sequence[int]],
    train_data: base_task.InputConfig,
    eval_data: Optional[base_task.InputConfig] = None,
    backbone: ModelBuilder = default_backbone,
    decoder: Optional[ModelBuilder] = None,
    head: ModelBuilder = retinanet_head.RetinaNetHead,
    min_level: int = 3,
    max_level: int = 7,
    num_scales: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_size: float = 4.0,
    l2_weight_decay: float = 0.0,
    focal_loss_alpha: float = retinanet_losses.FOCAL_LOSS_ALPHA,
    focal_loss_gamma: float = retinanet_losses.FOCAL_LOSS_GAMMA,
    huber_loss_delta: float = retinanet_losses.HUBER_LOSS_DELTA,
    box_loss_weight: float = retinanet_losses.BOX_LOSS_WEIGHT,
    pre_nms_top_k: int = retinanet_model.PRE_NMS_TOP_K,
    pre_nms_score_threshold: float = retinanet_model.PRE_NMS_SCORE_THRESHOLD,
    nms_iou_threshold: float = retinanet_model.NMS_IOU_THRESHOLD,
    max_num_detections: int = retinanet_model.MAX_NUM_DETECTIONS,
    annotation_file: Optional[str] = None,
    per_category_metrics: bool = True,
    image_dtype: str = 'float32',
  ):
    """Configures the task (nothing is built yet).

    Args:
      num_classes: classes including background (COCO: 91).
      image_size: model input (height, width) or an int; both must be multiples
        of 2^max_level.
      train_data: training split.
      eval_data: evaluation split (None: no evaluation).
      backbone: builder called as backbone(input_specs=[None, H, W, 3],
        min_level=, max_level=, kernel_regularizer=) -> dict-output model.
      decoder: optional builder called as decoder(input_specs=backbone.output_specs,
        min_level=, max_level=, kernel_regularizer=).
      head: builder called as head(min_level=, max_level=, num_classes=,
        num_anchors_per_location=, kernel_regularizer=).
      min_level, max_level: pyramid levels of the head and anchors.
      num_scales, aspect_ratios, anchor_size: anchors.
      l2_weight_decay: L2 weight decay; the papers' 4e-5 means a loss of
        l2_weight_decay / 2 * sum(w^2) as in Model Garden.
      focal_loss_alpha, focal_loss_gamma, huber_loss_delta, box_loss_weight: losses.
      pre_nms_top_k, pre_nms_score_threshold, nms_iou_threshold,
        max_num_detections: post-processing for evaluation.
      annotation_file: COCO JSON for evaluation; None builds the ground truth
        from the eval records.
      per_category_metrics: report AP per class too.
      image_dtype: dtype of the input images ('bfloat16' / 'float16' under
        mixed precision).
    """
    super().__init__(train_data, eval_data)
    self.num_classes = num_classes
    self.image_size = image_sizes.parse_image_size(image_size, 'RetinaNetTask.image_size')
    self._backbone_fn = backbone
    self._decoder_fn = decoder
    self._head_fn = head
    self.min_level = min_level
    self.max_level = max_level
    self.num_scales = num_scales
    self.aspect_ratios = tuple(aspect_ratios)
    self.anchor_size = anchor_size
    self.l2_weight_decay = l2_weight_decay
    self._loss_args = dict(
      focal_loss_alpha=focal_loss_alpha,
      focal_loss_gamma=focal_loss_gamma,
      huber_loss_delta=huber_loss_delta,
      box_loss_weight=box_loss_weight,
    )
    self.nms_settings = dict(
      pre_nms_top_k=pre_nms_top_k,
      pre_nms_score_threshold=pre_nms_score_threshold,
      nms_iou_threshold=nms_iou_threshold,
      max_num_detections=max_num_detections,
    )
    self.annotation_file = annotation_file
    self.per_category_metrics = per_category_metrics
    self.image_dtype = image_dtype

  def validate(self, mode: str) -> None:
    stride = 2**self.max_level
    if any(s % stride for s in self.image_size):
      fixed = tuple(int(math.ceil(s / stride) * stride) for s in self.image_size)
      raise ValueError(
        f'RetinaNetTask.image_size {self.image_size} must be a multiple of 2^max_level = '
        f'{stride} in both dimensions (max_level={self.max_level}); use e.g. {fixed}.'
      )
    if not 0 < self.min_level <= self.max_level:
      raise ValueError(f'Need 0 < min_level <= max_level, got {self.min_level}, {self.max_level}.')
    if self.num_classes < 2:
      raise ValueError(
        f'RetinaNetTask.num_classes counts the background class too and must be '
        f'>= 2, got {self.num_classes}.'
      )
    splits = []
    if mode in ('train', 'train_and_eval'):
      splits.append(('train_data', self.train_data))
    if mode in ('eval', 'train_and_eval', 'continuous_eval'):
      if self.eval_data is None:
        raise ValueError(f'--mode={mode} needs RetinaNetTask.eval_data.')
      splits.append(('eval_data', self.eval_data))
      if self.annotation_file and not tf.io.gfile.exists(self.annotation_file):
        raise ValueError(f'RetinaNetTask.annotation_file {self.annotation_file!r} does not exist.')
    for name, config in splits:
      if not config.file_pattern:
        raise ValueError(
          f'RetinaNetTask.{name}.file_pattern is empty; set it in the gin file or with --gin_param.'
        )
      files = retinanet_input.list_files(config.file_pattern)
      empty = [f for f in files if tf.io.gfile.stat(f).length == 0]
      if empty:
        raise ValueError(f'RetinaNetTask.{name}: empty data file(s) {empty[:3]}.')
      if config.global_batch_size < 1:
        raise ValueError(
          f'RetinaNetTask.{name}.global_batch_size must be >= 1, got {config.global_batch_size}.'
        )

  def build_model(self) -> retinanet_model.RetinaNetModel:
    regularizer = (
      tf_keras.regularizers.l2(self.l2_weight_decay / 2.0) if self.l2_weight_decay else None
    )
    height, width = self.image_size
    backbone = self._backbone_fn(
      input_specs=[None, height, width, 3],
      min_level=self.min_level,
      max_level=self.max_level,
      kernel_regularizer=regularizer,
    )
    decoder = None
    if self._decoder_fn is not None:
      decoder = self._decoder_fn(
        input_specs=backbone.output_specs,
        min_level=self.min_level,
        max_level=self.max_level,
        kernel_regularizer=regularizer,
      )
    head = self._head_fn(
      min_level=self.min_level,
      max_level=self.max_level,
      num_classes=self.num_classes,
      num_anchors_per_location=self.num_scales * len(self.aspect_ratios),
      kernel_regularizer=regularizer,
    )
    model = retinanet_model.RetinaNetModel(
      backbone=backbone,
      decoder=decoder,
      head=head,
      num_scales=self.num_scales,
      aspect_ratios=self.aspect_ratios,
      anchor_size=self.anchor_size,
    )
    # Builds every weight now, so checkpoints restore and optimizers see them.
    model(tf.zeros([1, height, width, 3]), training=False)
    return model

  def build_inputs(
    self, is_training: bool, input_context: Optional[tf.distribute.InputContext] = None
  ) -> tf.data.Dataset:
    config = self.train_data if is_training else self.eval_data
    return retinanet_input.build_retinanet_dataset(
      config.file_pattern,
      is_training=is_training,
      global_batch_size=config.global_batch_size,
      image_size=self.image_size,
      min_level=self.min_level,
      max_level=self.max_level,
      num_scales=self.num_scales,
      aspect_ratios=self.aspect_ratios,
      anchor_size=self.anchor_size,
      aug_scale_min=config.aug_scale_min,
      aug_scale_max=config.aug_scale_max,
      aug_rand_hflip=config.aug_rand_hflip,
      input_context=input_context,
      shuffle_buffer_size=config.shuffle_buffer_size,
      seed=config.seed,
      dtype=self.image_dtype,
    )

  def build_losses(self, outputs, labels, model) -> Dict[str, tf.Tensor]:
    losses = retinanet_losses.retinanet_loss(outputs, labels, self.num_classes, **self._loss_args)
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    # Every replica holds the same weights: count their decay once in the sum.
    l2_loss = (
      tf.add_n([tf.cast(l, tf.float32) for l in model.losses]) / num_replicas
      if model.losses
      else tf.constant(0.0)
    )
    model_loss = losses['total_loss']
    return {
      'total_loss': model_loss + l2_loss,
      'cls_loss': losses['cls_loss'],
      'box_loss': losses['box_loss'],
      'model_loss': model_loss,
      'l2_loss': l2_loss,
    }

  def eval_outputs(self, model, inputs, labels) -> Dict[str, tf.Tensor]:
    detections = model.detect(
      inputs,
      image_shape=labels['image_info'][:, 1, :],
      anchor_boxes=labels['anchor_boxes'],
      training=False,
      **self.nms_settings,
    )
    outputs = {
      key: detections[key]
      for key in ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')
    }
    outputs['image_info'] = labels['image_info']
    outputs['source_id'] = labels['groundtruths']['source_id']
    if not self.annotation_file:
      for key, value in labels['groundtruths'].items():
        outputs[f'groundtruths/{key}'] = value
    return outputs

  def build_evaluator(self) -> base_task.Evaluator:
    return DetectionEvaluator(self.annotation_file, self.per_category_metrics)

  def checkpoint_items(self, model: retinanet_model.RetinaNetModel) -> Dict[str, tf.Module]:
    return {'model': model, **model.checkpoint_items}


class DetectionEvaluator(base_task.Evaluator):
  """COCO box metrics (pycocotools) over `RetinaNetTask.eval_outputs`."""

  def __init__(self, annotation_file: Optional[str], per_category_metrics: bool = True):
    from official_spinenet.evaluation import coco_evaluator  # pylint: disable=g-import-not-at-top

    self._coco = coco_evaluator.COCOEvaluator(
      annotation_file=annotation_file, per_category_metrics=per_category_metrics
    )

  def update(self, outputs: Dict[str, Any]) -> None:
    groundtruths = {
      key.split('/', 1)[1]: np.asarray(value)
      for key, value in outputs.items()
      if key.startswith('groundtruths/')
    }
    detections = {
      key: np.asarray(outputs[key])
      for key in ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')
    }
    self._coco.update(
      detections,
      np.asarray(outputs['image_info']),
      np.asarray(outputs['source_id']),
      groundtruths=groundtruths or None,
    )

  def result(self) -> Dict[str, float]:
    return self._coco.result()

  def write_detections_json(self, path: str) -> None:
    self._coco.write_detections_json(path)

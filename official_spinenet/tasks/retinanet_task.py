"""The RetinaNet task: a backbone (+ decoder) + RetinaNet head, trained on TFRecords.

SpineNet Sec. 4 / NAS-FPN Sec. 3 evaluate their pyramids in RetinaNet: anchors of
`num_scales` octave scales x `aspect_ratios` per location on levels
min_level..max_level, focal loss for classes, Huber loss for boxes, weight decay.
The backbone, decoder and head are passed as builder callables so that gin (in
`configurables.py`) can choose and configure them while this module stays
gin-free.
"""

from typing import Callable, Dict, Optional, Sequence, Union

import tensorflow as tf
import tf_keras

from official_spinenet.data import retinanet_input
from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.tasks import base_task
from official_spinenet.tasks import detection_task
from official_spinenet.tasks import retinanet_losses

ModelBuilder = Callable[..., tf_keras.layers.Layer]


def default_backbone(**kwargs) -> tf_keras.Model:
  """SpineNet-49 (the builder used when a configuration names none)."""
  return factory.build_backbone('spinenet', '49', **kwargs)


class RetinaNetTask(detection_task.DetectionTask):
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
    super().__init__(
      num_classes,
      image_size,
      train_data,
      eval_data,
      min_level,
      max_level,
      l2_weight_decay,
      annotation_file,
      per_category_metrics,
      image_dtype,
    )
    self._backbone_fn = backbone
    self._decoder_fn = decoder
    self._head_fn = head
    self.num_scales = num_scales
    self.aspect_ratios = tuple(aspect_ratios)
    self.anchor_size = anchor_size
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

  def build_model(self) -> retinanet_model.RetinaNetModel:
    regularizer = self.kernel_regularizer()
    height, width = self.image_size
    backbone, decoder = self.build_pyramid(self._backbone_fn, self._decoder_fn, regularizer)
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
    return retinanet_input.build_retinanet_dataset(
      num_scales=self.num_scales,
      aspect_ratios=self.aspect_ratios,
      anchor_size=self.anchor_size,
      **self.split_input_args(is_training, input_context),
    )

  def build_losses(self, outputs, labels, model) -> Dict[str, tf.Tensor]:
    losses = retinanet_losses.retinanet_loss(outputs, labels, self.num_classes, **self._loss_args)
    l2_loss = self.weight_decay_loss(model)
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
    outputs = {key: detections[key] for key in detection_task.DETECTION_KEYS}
    outputs['image_info'] = labels['image_info']
    outputs['source_id'] = labels['groundtruths']['source_id']
    if not self.annotation_file:
      for key, value in labels['groundtruths'].items():
        outputs[f'groundtruths/{key}'] = value
    return outputs

  def build_evaluator(self) -> base_task.Evaluator:
    return detection_task.DetectionEvaluator(self.annotation_file, self.per_category_metrics)

  def checkpoint_items(self, model: retinanet_model.RetinaNetModel) -> Dict[str, tf.Module]:
    return {'model': model, **model.checkpoint_items}

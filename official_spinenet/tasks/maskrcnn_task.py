"""The Mask R-CNN task: a backbone (+ decoder) + Model Garden's R-CNN heads, on TFRecords.

SpineNet Sec. 5 reports every backbone in Mask R-CNN: the same scale-permuted
pyramid (P3..P7 for SpineNet) feeds an RPN, a box head on 7x7 RoIAligned crops
and a mask head on 14x14 crops predicting 28x28 per-class masks. The layers,
the parser and the losses are Model Garden's (see
`official_spinenet.modeling.maskrcnn_model`); this module wires them to our
trainer. Gin chooses the builders in `configurables.py`.

Losses (`loss_names`), each Model Garden's loss class on one replica's batch,
divided by the number of replicas so the trainer's sum over replicas is the
loss of the global batch (its train step divides the total the same way):
  rpn_score_loss  sigmoid CE over the parser's sampled anchors / (B x RoIs per image)
  rpn_box_loss    Huber(1/9) over positive anchors / (their global count + 0.01)
  frcnn_cls_loss  softmax CE averaged over the sampled RoIs
  frcnn_box_loss  Huber(1.0) of the true class's box / (positive RoIs x 4 + 0.01)
  mask_loss       sigmoid CE of the true class's mask / (foreground mask pixels + 0.01)
  model_loss      the weighted sum; total_loss = model_loss + l2_loss.
Model Garden's box and mask normalisers add 0.01 per replica (it all-reduces the
mean count), so over N replicas the denominators carry 0.01 N instead of 0.01:
a relative difference of 0.01 (N - 1) / count, kept for equality with it.
"""

from typing import Any, Callable, Dict, Optional, Sequence, Union

import tensorflow as tf
import tf_keras

from official_spinenet import model_garden
from official_spinenet.data import maskrcnn_input
from official_spinenet.modeling import maskrcnn_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.tasks import base_task
from official_spinenet.tasks import detection_task

ModelBuilder = Callable[..., tf_keras.layers.Layer]
LOSS_NAMES = (
  'total_loss',
  'rpn_score_loss',
  'rpn_box_loss',
  'frcnn_cls_loss',
  'frcnn_box_loss',
  'mask_loss',
  'model_loss',
  'l2_loss',
)


def _loss_weights(overrides: Optional[Dict[str, float]]) -> Dict[str, float]:
  """The weight of each weighted loss: 1.0 unless overridden; unknown names fail."""
  weighted = LOSS_NAMES[1:6]
  unknown = sorted(set(overrides or {}) - set(weighted))
  if unknown:
    raise ValueError(
      f'MaskRCNNTask.loss_weights: unknown loss(es) {unknown}; known: {list(weighted)}.'
    )
  return {name: float((overrides or {}).get(name, 1.0)) for name in weighted}


def default_backbone(**kwargs) -> tf_keras.Model:
  """SpineNet-49 (the builder used when a configuration names none)."""
  return factory.build_backbone('spinenet', '49', **kwargs)


class MaskRCNNTask(detection_task.DetectionTask):
  """Mask R-CNN (or Faster R-CNN without a mask head) on any pyramid backbone."""

  loss_names = LOSS_NAMES

  def __init__(
    self,
    num_classes: int,
    image_size: Union[int, Sequence[int]],
    train_data: base_task.InputConfig,
    eval_data: Optional[base_task.InputConfig] = None,
    backbone: ModelBuilder = default_backbone,
    decoder: Optional[ModelBuilder] = None,
    rpn_head: ModelBuilder = maskrcnn_model.rpn_head,
    detection_head: ModelBuilder = maskrcnn_model.detection_head,
    mask_head: Optional[ModelBuilder] = maskrcnn_model.mask_head,
    roi_generator: ModelBuilder = maskrcnn_model.roi_generator,
    roi_sampler: ModelBuilder = maskrcnn_model.roi_sampler,
    detection_generator: ModelBuilder = maskrcnn_model.detection_generator,
    min_level: int = 3,
    max_level: int = 7,
    num_scales: int = 1,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_size: float = 3.0,
    roi_crop_size: int = maskrcnn_model.ROI_CROP_SIZE,
    mask_crop_size: int = maskrcnn_model.MASK_CROP_SIZE,
    num_sampled_masks: int = maskrcnn_model.NUM_SAMPLED_MASKS,
    rpn_match_threshold: float = 0.7,
    rpn_unmatched_threshold: float = 0.3,
    rpn_batch_size_per_im: int = 256,
    rpn_fg_fraction: float = 0.5,
    gt_mask_crop_size: int = 112,
    l2_weight_decay: float = 0.0,
    rpn_huber_loss_delta: float = 1.0 / 9.0,
    frcnn_huber_loss_delta: float = 1.0,
    loss_weights: Optional[Dict[str, float]] = None,
    annotation_file: Optional[str] = None,
    per_category_metrics: bool = True,
    image_dtype: str = 'float32',
  ):
    """Configures the task (nothing is built yet).

    Args:
      num_classes: classes including background (COCO: 91).
      image_size: model input (height, width) or an int; multiples of 2^max_level.
      train_data, eval_data: the splits (eval_data None: no evaluation).
      backbone, decoder: builders as for RetinaNetTask (decoder None: the
        backbone's pyramid feeds the heads, as SpineNet does).
      rpn_head, detection_head, mask_head: head builders (Model Garden's RPNHead,
        DetectionHead, MaskHead by default); the task passes levels, anchors,
        classes and the regularizer. mask_head None: Faster R-CNN, boxes only.
      roi_generator, roi_sampler, detection_generator: builders of Model
        Garden's MultilevelROIGenerator, ROISampler and DetectionGenerator.
      min_level, max_level: pyramid levels of the RPN and the RoI pooling.
      num_scales, aspect_ratios, anchor_size: RPN anchors (SpineNet: 1, 3
        ratios, size 3).
      roi_crop_size, mask_crop_size: RoIAlign sizes of the box and mask heads.
      num_sampled_masks: foreground RoIs per image training the mask head.
      rpn_match_threshold, rpn_unmatched_threshold, rpn_batch_size_per_im,
        rpn_fg_fraction: RPN anchor labels (input pipeline).
      gt_mask_crop_size: size the parser crops ground-truth masks to.
      l2_weight_decay: as RetinaNetTask (l2_weight_decay / 2 * sum(w^2)).
      rpn_huber_loss_delta, frcnn_huber_loss_delta: Huber deltas of the RPN and
        box-head box losses.
      loss_weights: weights of 'rpn_score_loss', 'rpn_box_loss',
        'frcnn_cls_loss', 'frcnn_box_loss', 'mask_loss' (missing ones: 1.0).
      annotation_file: COCO JSON for evaluation; None: ground truth from the
        eval records.
      per_category_metrics: report per-class AP (boxes and masks).
      image_dtype: dtype of input images.
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
    self._builders = dict(
      backbone=backbone,
      decoder=decoder,
      rpn_head_fn=rpn_head,
      detection_head_fn=detection_head,
      mask_head_fn=mask_head,
      roi_generator_fn=roi_generator,
      roi_sampler_fn=roi_sampler,
      detection_generator_fn=detection_generator,
    )
    self.include_mask = mask_head is not None
    self.anchors = dict(
      num_scales=num_scales, aspect_ratios=tuple(aspect_ratios), anchor_size=anchor_size
    )
    self._roi_sizes = dict(
      roi_crop_size=roi_crop_size,
      mask_crop_size=mask_crop_size,
      num_sampled_masks=num_sampled_masks,
    )
    self._parser_args = dict(
      rpn_match_threshold=rpn_match_threshold,
      rpn_unmatched_threshold=rpn_unmatched_threshold,
      rpn_batch_size_per_im=rpn_batch_size_per_im,
      rpn_fg_fraction=rpn_fg_fraction,
      mask_crop_size=gt_mask_crop_size,
    )
    self.rpn_huber_loss_delta = rpn_huber_loss_delta
    self.frcnn_huber_loss_delta = frcnn_huber_loss_delta
    self.loss_weights = _loss_weights(loss_weights)

  def validate(self, mode: str) -> None:
    super().validate(mode)
    if self.include_mask:
      for name, config in self.splits_read(mode):
        maskrcnn_input.check_instance_masks(
          config.file_pattern, f'MaskRCNNTask.{name}.file_pattern'
        )

  def build_model(self) -> tf_keras.Model:
    regularizer = self.kernel_regularizer()
    builders = dict(self._builders)
    backbone, decoder = self.build_pyramid(
      builders.pop('backbone'), builders.pop('decoder'), regularizer
    )
    model = maskrcnn_model.build_maskrcnn_model(
      backbone,
      decoder,
      num_classes=self.num_classes,
      min_level=self.min_level,
      max_level=self.max_level,
      kernel_regularizer=regularizer,
      **self.anchors,
      **builders,
      **self._roi_sizes,
    )
    # Builds every weight now, so checkpoints restore and optimizers see them.
    maskrcnn_model.build_weights(model, self.image_size)
    return model

  def build_inputs(
    self, is_training: bool, input_context: Optional[tf.distribute.InputContext] = None
  ) -> tf.data.Dataset:
    return maskrcnn_input.build_maskrcnn_dataset(
      include_mask=self.include_mask,
      **self.split_input_args(is_training, input_context),
      **self.anchors,
      **self._parser_args,
    )

  def train_outputs(self, model, inputs, labels) -> Dict[str, Any]:
    """The training forward pass: RPN, sampled RoIs and their targets, mask logits."""
    kwargs = dict(
      image_shape=labels['image_info'][:, 1, :],
      anchor_boxes=labels['anchor_boxes'],
      gt_boxes=labels['gt_boxes'],
      gt_classes=labels['gt_classes'],
    )
    if self.include_mask:
      kwargs['gt_masks'] = labels['gt_masks']
    outputs = model(inputs, training=True, **kwargs)
    return tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)

  def build_losses(self, outputs, labels, model) -> Dict[str, tf.Tensor]:
    losses = self.model_losses(outputs, labels)
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    losses = {name: value / num_replicas for name, value in losses.items()}
    model_loss = tf.add_n([self.loss_weights[name] * losses[name] for name in self.loss_weights])
    l2_loss = self.weight_decay_loss(model)
    losses.update(model_loss=model_loss, l2_loss=l2_loss, total_loss=model_loss + l2_loss)
    return losses

  def model_losses(self, outputs, labels) -> Dict[str, tf.Tensor]:
    """Model Garden's five Mask R-CNN losses of one replica, as its task computes them."""
    losses_lib = model_garden.load('maskrcnn_losses')
    # Model Garden normalises the RPN score loss by images x sampled RoIs per image.
    rpn_score = losses_lib.RpnScoreLoss(tf.shape(outputs['box_outputs'])[1])
    rpn_box = losses_lib.RpnBoxLoss(self.rpn_huber_loss_delta)
    frcnn_cls = losses_lib.FastrcnnClassLoss()
    frcnn_box = losses_lib.FastrcnnBoxLoss(self.frcnn_huber_loss_delta)
    losses = {
      'rpn_score_loss': rpn_score(outputs['rpn_scores'], labels['rpn_score_targets']),
      'rpn_box_loss': rpn_box(outputs['rpn_boxes'], labels['rpn_box_targets']),
      'frcnn_cls_loss': frcnn_cls(outputs['class_outputs'], outputs['class_targets']),
      'frcnn_box_loss': frcnn_box(
        outputs['box_outputs'], outputs['class_targets'], outputs['box_targets']
      ),
      'mask_loss': tf.constant(0.0),
    }
    if self.include_mask:
      losses['mask_loss'] = losses_lib.MaskrcnnLoss()(
        outputs['mask_outputs'], outputs['mask_targets'], outputs['mask_class_targets']
      )
    return {name: tf.reduce_mean(value) for name, value in losses.items()}

  def eval_outputs(self, model, inputs, labels) -> Dict[str, tf.Tensor]:
    raw = model(
      inputs,
      image_shape=labels['image_info'][:, 1, :],
      anchor_boxes=labels['anchor_boxes'],
      training=False,
    )
    outputs = maskrcnn_model.inference_outputs(raw, self.include_mask)
    outputs['image_info'] = labels['image_info']
    outputs['source_id'] = labels['groundtruths']['source_id']
    if not self.annotation_file and not self.include_mask:
      for key, value in labels['groundtruths'].items():
        outputs[f'groundtruths/{key}'] = value
    return outputs

  def build_evaluator(self) -> base_task.Evaluator:
    return detection_task.DetectionEvaluator(
      self.annotation_file,
      self.per_category_metrics,
      self.include_mask,
      eval_file_pattern=self.eval_data.file_pattern,
    )

  def checkpoint_items(self, model) -> Dict[str, tf.Module]:
    return {'model': model, **model.checkpoint_items}

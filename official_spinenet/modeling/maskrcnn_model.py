"""Mask R-CNN on our backbones, wired from Model Garden's generic pieces.

SpineNet Sec. 5 evaluates every backbone in Mask R-CNN (He et al. 2017): an RPN
on the pyramid proposes boxes, a box head classifies and refines RoIAligned
crops of them, and a mask head predicts a per-class mask in each detection. We
reuse Model Garden's `MaskRCNNModel` and its layers (RPNHead, DetectionHead,
MaskHead, MultilevelROIGenerator, ROISampler, MultilevelROIAligner, MaskSampler,
DetectionGenerator) unchanged, and build them here instead of with its
`factory.build_maskrcnn`, which needs its config objects and would build its own
SpineNet.

The builder functions below (`rpn_head`, `detection_head`, `mask_head`,
`roi_generator`, `roi_sampler`, `detection_generator`) forward their keyword
arguments to those classes, loaded (`model_garden.load`) only when called:
importing `official.vision` loads its whole task registry.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet import model_garden

# Model Garden's Mask R-CNN model defaults (configs/maskrcnn.py).
ROI_CROP_SIZE = 7
MASK_CROP_SIZE = 14
NUM_SAMPLED_MASKS = 128

# Builder name -> (Model Garden module name, class name).
_LAYERS = {
  'rpn_head': ('dense_prediction_heads', 'RPNHead'),
  'detection_head': ('instance_heads', 'DetectionHead'),
  'mask_head': ('instance_heads', 'MaskHead'),
  'roi_generator': ('roi_generator', 'MultilevelROIGenerator'),
  'roi_sampler': ('roi_sampler', 'ROISampler'),
  'roi_aligner': ('roi_aligner', 'MultilevelROIAligner'),
  'mask_sampler': ('mask_sampler', 'MaskSampler'),
  'detection_generator': ('detection_generator', 'DetectionGenerator'),
}


def layer_class(name: str) -> type:
  """The Model Garden class behind builder `name` (e.g. 'rpn_head' -> RPNHead)."""
  module, cls = _LAYERS[name]
  return getattr(model_garden.load(module), cls)


def rpn_head(**kwargs) -> tf_keras.layers.Layer:
  """Model Garden's RPNHead: per level [B, H, W, A] objectness and [B, H, W, 4A] boxes."""
  return layer_class('rpn_head')(**kwargs)


def detection_head(**kwargs) -> tf_keras.layers.Layer:
  """Model Garden's DetectionHead (convs + FCs on RoI crops -> class and box outputs)."""
  return layer_class('detection_head')(**kwargs)


def mask_head(**kwargs) -> tf_keras.layers.Layer:
  """Model Garden's MaskHead (convs + upsampling on RoI crops -> per-class mask logits)."""
  return layer_class('mask_head')(**kwargs)


def roi_generator(**kwargs) -> tf_keras.layers.Layer:
  """Model Garden's MultilevelROIGenerator (RPN outputs -> NMS'ed proposals)."""
  return layer_class('roi_generator')(**kwargs)


def roi_sampler(**kwargs) -> tf_keras.layers.Layer:
  """Model Garden's ROISampler (proposals + ground truth -> sampled training RoIs)."""
  return layer_class('roi_sampler')(**kwargs)


def detection_generator(**kwargs) -> tf_keras.layers.Layer:
  """Model Garden's DetectionGenerator (box head outputs -> per-class NMS'ed detections)."""
  return layer_class('detection_generator')(**kwargs)


LayerBuilder = Callable[..., tf_keras.layers.Layer]


def build_maskrcnn_model(
  backbone: tf_keras.Model,
  decoder: Optional[tf_keras.Model],
  num_classes: int,
  min_level: int,
  max_level: int,
  num_scales: int,
  aspect_ratios: Sequence[float],
  anchor_size: float,
  rpn_head_fn: LayerBuilder = rpn_head,
  detection_head_fn: LayerBuilder = detection_head,
  mask_head_fn: Optional[LayerBuilder] = mask_head,
  roi_generator_fn: LayerBuilder = roi_generator,
  roi_sampler_fn: LayerBuilder = roi_sampler,
  detection_generator_fn: LayerBuilder = detection_generator,
  roi_crop_size: int = ROI_CROP_SIZE,
  mask_crop_size: int = MASK_CROP_SIZE,
  num_sampled_masks: int = NUM_SAMPLED_MASKS,
  kernel_regularizer: Optional[tf_keras.regularizers.Regularizer] = None,
) -> tf_keras.Model:
  """Model Garden's MaskRCNNModel around our backbone (and decoder).

  Args:
    backbone: dict-output backbone (str(level) -> [B, H/2^l, W/2^l, C]).
    decoder: optional decoder on the backbone's outputs (e.g. NAS-FPN); None
      feeds the backbone's pyramid straight to the heads (SpineNet Sec. 5).
    num_classes: classes including background.
    min_level, max_level, num_scales, aspect_ratios, anchor_size: RPN anchors.
    rpn_head_fn, detection_head_fn, mask_head_fn: head builders, called with the
      sizes this function fixes (levels, anchors, classes, regularizer) plus
      whatever the caller bound; mask_head_fn None builds Faster R-CNN (boxes).
    roi_generator_fn, roi_sampler_fn, detection_generator_fn: builders of the
      RoI pipeline layers (called without arguments).
    roi_crop_size: RoIAlign output of the box head (Mask R-CNN: 7).
    mask_crop_size: RoIAlign output of the mask head (14); the mask targets are
      mask_crop_size * the mask head's upsample_factor pixels square (28).
    num_sampled_masks: foreground RoIs per image that train the mask head.
    kernel_regularizer: weight decay of every head's kernels.

  Returns:
    A built MaskRCNNModel: call(images [B, H, W, 3], image_shape [B, 2],
    anchor_boxes, gt_boxes, gt_classes, gt_masks, training).
  """
  rpn = rpn_head_fn(
    min_level=min_level,
    max_level=max_level,
    num_anchors_per_location=num_scales * len(aspect_ratios),
    kernel_regularizer=kernel_regularizer,
  )
  box_head = detection_head_fn(
    num_classes=num_classes, kernel_regularizer=kernel_regularizer, name='detection_head'
  )
  masks: Dict[str, Any] = {}
  if mask_head_fn is not None:
    head = mask_head_fn(num_classes=num_classes, kernel_regularizer=kernel_regularizer)
    masks['mask_head'] = head
    upsample = head.get_config()['upsample_factor']
    masks['mask_sampler'] = layer_class('mask_sampler')(
      mask_target_size=mask_crop_size * upsample, num_sampled_masks=num_sampled_masks
    )
    masks['mask_roi_aligner'] = layer_class('roi_aligner')(crop_size=mask_crop_size)
  model = model_garden.load('maskrcnn_model').MaskRCNNModel(
    backbone=backbone,
    decoder=decoder,
    rpn_head=rpn,
    detection_head=box_head,
    roi_generator=roi_generator_fn(),
    roi_sampler=roi_sampler_fn(),
    roi_aligner=layer_class('roi_aligner')(crop_size=roi_crop_size),
    detection_generator=detection_generator_fn(),
    min_level=min_level,
    max_level=max_level,
    num_scales=num_scales,
    aspect_ratios=list(aspect_ratios),
    anchor_size=anchor_size,
    **masks,
  )
  return model


def build_weights(model: tf_keras.Model, image_size: Tuple[int, int]) -> None:
  """Creates every weight with one inference call on a zero image."""
  height, width = image_size
  model(tf.zeros([1, height, width, 3]), image_shape=tf.constant([[height, width]]), training=False)


def inference_outputs(outputs: Mapping[str, tf.Tensor], include_mask: bool) -> Dict[str, tf.Tensor]:
  """The detections of an inference call: boxes [B, N, 4] in model-input pixels,
  scores / classes [B, N], num_detections [B], and with masks detection_masks
  [B, N, M, M] (probabilities of each detection's box crop)."""
  keys = ['detection_boxes', 'detection_scores', 'detection_classes', 'num_detections']
  if include_mask:
    keys.append('detection_masks')
  return {key: outputs[key] for key in keys}

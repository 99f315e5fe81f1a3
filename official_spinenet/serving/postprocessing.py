"""Serving-time post-processing: NMS per image, and boxes back to original pixels.

The model sees a resized, padded image; image_info ([B, 4, 2]: original size, scaled
size, scale, offset) maps its boxes back to the image the client sent.
"""

from typing import Dict, Mapping

import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.modeling import retinanet_model

DETECTION_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')


def boxes_to_original(boxes: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
  """Maps boxes from model-input pixels to original-image pixels.

  The parser scales by image_info[:, 2] and then shifts by -image_info[:, 3] (zero at
  eval), so the inverse is (box + offset) / scale, clipped to the original image.

  Args:
    boxes: [B, N, 4] (ymin, xmin, ymax, xmax) in model-input pixels.
    image_info: [B, 4, 2] from the preprocessing.

  Returns:
    [B, N, 4] in original-image pixels.
  """
  offset = tf.tile(image_info[:, 3:4, :], [1, 1, 2])
  scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])
  original = (boxes + offset) / scale
  size = tf.tile(image_info[:, 0:1, :], [1, 1, 2])
  return tf.clip_by_value(original, 0.0, size)


def _with_batch(
  anchor_boxes: Mapping[str, tf.Tensor], batch_size: tf.Tensor
) -> Dict[str, tf.Tensor]:
  """Unbatched anchors [H, W, 4A] tiled to [batch_size, H, W, 4A]."""
  return {
    level: tf.tile(boxes[None], [batch_size, 1, 1, 1]) for level, boxes in anchor_boxes.items()
  }


def detections_per_image(
  outputs: Mapping[str, Mapping[str, tf.Tensor]],
  anchor_boxes: Mapping[str, tf.Tensor],
  image_shape: tf.Tensor,
  max_num_detections: int,
  **nms_settings,
) -> Dict[str, tf.Tensor]:
  """`retinanet_model.generate_detections` run on one image at a time (tf.map_fn).

  Why per image: NMS is per image anyway, and some NMS versions (Model Garden's v1)
  unroll a *static* batch, which a dynamic-batch signature does not have. With batch 1
  inside the loop every version works and the results equal the batched call's. It
  costs nothing: with the default 'fast' NMS, tiny model, batch 8 on this 2-core CPU,
  the loop took 34 ms against 120 ms for one batched call.

  Args:
    outputs: the model's raw outputs ({'cls_outputs', 'box_outputs'} -> level -> [B, ...]).
    anchor_boxes: level -> [H, W, 4A] anchors for the model input size.
    image_shape: [B, 2] scaled (unpadded) image size; boxes are clipped to it.
    max_num_detections: detections kept per image.
    **nms_settings: the other keyword arguments of generate_detections.

  Returns:
    detection_boxes [B, max, 4] (model-input pixels), detection_scores [B, max],
    detection_classes int32 [B, max], num_detections int32 [B].
  """

  def one_image(elems):
    image_outputs, shape = elems
    batched = tf.nest.map_structure(lambda t: t[None], image_outputs)
    result = retinanet_model.generate_detections(
      batched, anchor_boxes, shape[None], max_num_detections=max_num_detections, **nms_settings
    )
    return (
      tf.reshape(result['detection_boxes'], [max_num_detections, 4]),
      tf.reshape(result['detection_scores'], [max_num_detections]),
      tf.reshape(tf.cast(result['detection_classes'], tf.int32), [max_num_detections]),
      tf.reshape(tf.cast(result['num_detections'], tf.int32), []),
    )

  specs = (
    tf.TensorSpec([max_num_detections, 4], tf.float32),
    tf.TensorSpec([max_num_detections], tf.float32),
    tf.TensorSpec([max_num_detections], tf.int32),
    tf.TensorSpec([], tf.int32),
  )
  results = tf.map_fn(
    one_image, (dict(outputs), tf.cast(image_shape, tf.float32)), fn_output_signature=specs
  )
  return dict(zip(DETECTION_KEYS, results))


def decode_all_anchors(
  outputs: Mapping[str, Mapping[str, tf.Tensor]],
  anchor_boxes: Mapping[str, tf.Tensor],
  image_shape: tf.Tensor,
) -> Dict[str, tf.Tensor]:
  """Decoded boxes and per-class scores for every anchor, without NMS or threshold.

  Model Garden's MultilevelDetectionGenerator with apply_nms=False: sigmoid scores with
  the background class dropped, boxes decoded from the anchors and clipped to
  image_shape. Anchors are ordered level by level (min..max), then y, x, anchor.

  Args:
    outputs: the model's raw outputs.
    anchor_boxes: level -> [H, W, 4A] anchors.
    image_shape: [B, 2] scaled (unpadded) image size.

  Returns:
    decoded_boxes [B, num_anchors, 4] (model-input pixels) and decoded_box_scores
    [B, num_anchors, num_classes - 1] (column c is class id c + 1).
  """
  detection_generator = model_garden.load('detection_generator')
  cls_outputs = outputs['cls_outputs']
  box_outputs = outputs['box_outputs']
  batch_size = tf.shape(next(iter(box_outputs.values())))[0]
  generator = detection_generator.MultilevelDetectionGenerator(apply_nms=False)
  results = generator(
    {k: tf.cast(v, tf.float32) for k, v in box_outputs.items()},
    {k: tf.cast(v, tf.float32) for k, v in cls_outputs.items()},
    _with_batch(anchor_boxes, batch_size),
    tf.cast(image_shape, tf.float32),
  )
  return {
    'decoded_boxes': tf.squeeze(results['decoded_boxes'], axis=2),
    'decoded_box_scores': results['decoded_box_scores'],
  }

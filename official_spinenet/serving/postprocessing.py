"""Serving-time post-processing: NMS per image, boxes back to original pixels, masks.

The model sees a resized, padded image; image_info ([B, 4, 2]: original size, scaled
size, scale, offset) maps its boxes back to the image the client sent. Mask R-CNN's
masks are relative to each box, so they need no mapping; `paste_masks` (graph) and
`image_masks` (host) paste them into the image's pixels (COCO RLE: `instance_masks.encode_rle`).
"""

from typing import Dict, Iterator, Mapping, Tuple

import numpy as np
import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.evaluation import instance_masks
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


# Mask R-CNN's masks are probabilities over each detection's box; a pixel is in the
# object where the resampled probability exceeds this (Detectron's rule).
MASK_THRESHOLD = 0.5


def _detectron_pixel_boxes(boxes: tf.Tensor, mask_size: Tuple[int, int]) -> tf.Tensor:
  """Boxes [N, 4] (y1, x1, y2, x2) -> int32 [N, 4] (x1, y1, x2, y2) pixel corners.

  Model Garden's `mask_ops.paste_instance_masks` (Detectron's paste) step for step in
  float64: the box grows about its centre by (m + 2) / m, since the mask gets a zero
  border of one cell before it is resized, and the corners are truncated towards zero
  (numpy's astype). The corners are inclusive pixels.
  """
  boxes = tf.cast(boxes, tf.float64)
  scale = max((mask_size[1] + 2.0) / mask_size[1], (mask_size[0] + 2.0) / mask_size[0])
  w_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
  h_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
  x_c = boxes[:, 1] + w_half
  y_c = boxes[:, 0] + h_half
  w_half *= scale
  h_half *= scale
  return tf.cast(tf.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1), tf.int32)


def _resize_window(start: tf.Tensor, end: tf.Tensor, padded: int, length: tf.Tensor):
  """crop_and_resize's normalised [from, to] that samples a padded mask along one axis.

  Detectron resizes the padded mask (`padded` cells) to the box's end - start + 1
  pixels with cv2's bilinear resize, whose pixel p samples the mask at
  (p + 0.5) * padded / size - 0.5 (clamped, and the border is zero). Over the
  whole canvas of `length` pixels that is canvas pixel c -> (c - start + 0.5) *
  padded / size - 0.5: pixels outside the box fall outside the mask and get
  crop_and_resize's extrapolation value 0, as Detectron leaves them.
  """
  size = tf.cast(tf.maximum(end - start + 1, 1), tf.float32)
  step = padded / size
  first = (0.5 - tf.cast(start, tf.float32)) * step - 0.5
  last = first + tf.cast(length - 1, tf.float32) * step
  return first / (padded - 1), last / (padded - 1)


def paste_masks(
  masks: tf.Tensor, boxes: tf.Tensor, image_size: tf.Tensor, canvas_size: tf.Tensor
) -> tf.Tensor:
  """Pastes crop masks into an image's pixels (graph ops; Detectron's paste).

  The same pixels as Model Garden's numpy `mask_ops.paste_instance_masks`, the
  paste its COCO evaluator (and ours, by default) scores masks with, up to the
  rounding of bilinear weights for a pixel whose probability is within ~1e-6 of 0.5.
  One mask at a time, so the float memory is one canvas per parallel iteration.

  Args:
    masks: float [N, m, m] probabilities over each box (Mask R-CNN: 28 x 28).
    boxes: [N, 4] (ymin, xmin, ymax, xmax) in the image's pixels.
    image_size: int [2] (height, width) of the image; nothing is pasted beyond it.
    canvas_size: int [2] of the output, at least image_size (a batch's largest image).

  Returns:
    uint8 [N, canvas height, canvas width], 1 inside the object.
  """
  mask_size = masks.shape[1:3].as_list()
  padded = tf.pad(tf.cast(masks, tf.float32), [[0, 0], [1, 1], [1, 1]])[..., None]
  corners = _detectron_pixel_boxes(boxes, mask_size)
  image_size = tf.cast(image_size, tf.int32)
  canvas_size = tf.cast(canvas_size, tf.int32)
  y_from, y_to = _resize_window(corners[:, 1], corners[:, 3], mask_size[0] + 2, canvas_size[0])
  x_from, x_to = _resize_window(corners[:, 0], corners[:, 2], mask_size[1] + 2, canvas_size[1])
  windows = tf.stack([y_from, x_from, y_to, x_to], axis=1)
  inside = tf.logical_and(
    tf.range(canvas_size[0])[:, None] < image_size[0],
    tf.range(canvas_size[1])[None, :] < image_size[1],
  )

  def one_mask(index):
    pasted = tf.image.crop_and_resize(
      padded, windows[index][None], index[None], canvas_size, extrapolation_value=0.0
    )[0, :, :, 0]
    return tf.cast(tf.logical_and(pasted > MASK_THRESHOLD, inside), tf.uint8)

  return tf.map_fn(
    one_mask, tf.range(tf.shape(masks)[0]), fn_output_signature=tf.TensorSpec(None, tf.uint8)
  )


def paste_batch_masks(masks: tf.Tensor, boxes: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
  """`paste_masks` over a batch whose images may differ in size.

  Args:
    masks: float [B, N, m, m] crop masks.
    boxes: [B, N, 4] in original-image pixels.
    image_info: [B, 4, 2]; row 0 is each image's original (height, width).

  Returns:
    uint8 [B, N, H, W], H and W the largest original height and width of the batch;
    each image's masks are zero beyond its own size.
  """
  sizes = tf.cast(image_info[:, 0, :], tf.int32)
  canvas_size = tf.reduce_max(sizes, axis=0)
  return tf.map_fn(
    lambda elems: paste_masks(elems[0], elems[1], elems[2], canvas_size),
    (masks, boxes, sizes),
    fn_output_signature=tf.TensorSpec([masks.shape[1], None, None], tf.uint8),
  )


def zero_padding(detections: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """Detections with every entry past num_detections zero, classes and count int32.

  Model Garden's NMS pads its outputs with class 1 (background 0 + 1); the exports
  promise zero padding.

  Args:
    detections: num_detections [B] and tensors [B, N, ...] (boxes, scores, classes,
      masks).
  """
  count = tf.cast(detections['num_detections'], tf.int32)
  valid = tf.sequence_mask(count, tf.shape(detections['detection_scores'])[1])
  result = {'num_detections': count}
  for key, value in detections.items():
    if key == 'num_detections':
      continue
    if key == 'detection_classes':
      value = tf.cast(value, tf.int32)
    keep = tf.reshape(
      valid, tf.concat([tf.shape(valid), tf.ones([value.shape.rank - 2], tf.int32)], 0)
    )
    result[key] = tf.where(keep, value, tf.zeros_like(value))
  return result


def image_masks(
  masks: np.ndarray, boxes: np.ndarray, image_size: Tuple[int, int]
) -> Iterator[np.ndarray]:
  """Each detection's mask in the image's pixels, one at a time (host side, numpy).

  Args:
    masks: crop masks float [N, m, m] (probabilities over each box, pasted here with
      Model Garden's `mask_ops.paste_instance_masks`, as `paste_masks` does in the
      graph), or masks already pasted by the export, [N, height, width] 0 / 1.
    boxes: [N, 4] (ymin, xmin, ymax, xmax) in the image's pixels.
    image_size: (height, width).

  Yields:
    uint8 [height, width] per detection, 1 inside the object.
  """
  height, width = (int(s) for s in image_size)
  masks = np.asarray(masks)
  if masks.shape[1:] == (height, width) and not np.issubdtype(masks.dtype, np.floating):
    for mask in masks:
      yield (mask != 0).astype(np.uint8)
    return
  paste = instance_masks.paste_function('detectron')
  for mask, (ymin, xmin, ymax, xmax) in zip(masks, np.asarray(boxes, np.float64)):
    box = np.array([[xmin, ymin, xmax - xmin, ymax - ymin]])
    yield paste(mask[None].astype(np.float32), box, height, width)[0]

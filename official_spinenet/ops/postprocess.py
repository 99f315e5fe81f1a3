"""Fast RetinaNet post-processing: decode, score threshold, class-aware NMS.

`generate_detections_fast` returns the same detections as Model Garden's
`MultilevelDetectionGenerator(nms_version='v1')` (the same boxes, scores,
classes, order and count), in milliseconds instead of seconds on a CPU.

Why v1 is slow: for every class it takes the top `pre_nms_top_k` (5000)
anchors, above the score threshold or not, and runs
`tf.image.non_max_suppression_padded` (a tiled pure-TF while loop) on them:
90 classes x 5000 boxes per image, seconds per 640 px image on a 2-core CPU.

What this does instead, for the whole batch at once:
  1. decodes and clips every box and takes the sigmoid of every logit, as v1
     does (the same ops on tensors of the same shapes);
  2. keeps the (image, anchor, class) triples scoring above the threshold, at
     most `pre_nms_top_k` per image and class (when there are very many, as
     from an untrained model, each class's top-k is taken first, as v1 does);
  3. sorts them by (image, class, score) and calls the C++ NMS kernel once per
     (image, class) that has any: a loop over those pairs, not over all
     classes x 5000 anchors;
  4. merges: the `max_num_detections` best per image.
Its cost grows with the number of candidates up to `DENSE_CANDIDATES_PER_IMAGE`;
beyond that (a score threshold of 0, an untrained model) it selects as v1 does.

Why it equals v1, detail by detail:
  * scores: the same sigmoid of the same logit tensor, `score > threshold`;
  * pre_nms_top_k: per class, by score, ties to the lower anchor index, as
    v1's `tf.math.top_k`;
  * a box clipped to all zeros ([0, 0, 0, 0]) is dropped: v1's padded NMS
    takes an all-zero box for padding and never selects it;
  * suppression: v1 suppresses when IoU >= threshold, the C++ kernel when
    IoU > threshold, so the kernel is given the next float32 below it;
  * order: score descending, ties by class, then anchor index (v1 merges its
    per-class results, concatenated in class order, with `top_k`);
  * boxes: in a graph, grappler fuses the decoding's multiply-adds (only
    between tensors of equal shapes, hence tiled anchors, as v1's), which
    changes the last bit of some boxes; so decoding always runs in a graph,
    even when this is called eagerly, like v1 in its usual tf.function.

Where it can differ from v1 (documented and tested):
  * padding: entries past `num_detections` are zeros (boxes, scores and
    classes); v1 leaves score -1 and some other box and class there;
  * boxes may differ by an ulp or two where the graphs around the decoding
    differ (e.g. constant anchors in a SavedModel are folded, not fused): v1
    itself varies so between such contexts;
  * v1 adds 1e-8 to the union area in its IoU, the C++ kernel does not. Their
    float32 IoUs are equal whenever the union exceeds ~0.2 square pixels, so
    only overlapping boxes smaller than about half a pixel can be suppressed
    differently;
  * v1 needs a static batch size; this takes any (dynamic) batch size.

Pure TF: traceable in `tf.function` and SavedModel, no numpy or py_function
in the graph. It uses CPU kernels (NonMaxSuppressionV3); on TPU use v1 or v2.
"""

from typing import Dict, List, Mapping, Tuple

import numpy as np
import tensorflow as tf

from official_spinenet import model_garden

# Candidates per image above which each class's top-k is taken first (v1's way):
# sorting 100,000 candidates costs about what top_k over every anchor and class of a
# 640 px image with 91 classes costs.
DENSE_CANDIDATES_PER_IMAGE = 100_000


def _decoded(
  outputs: Mapping[str, Mapping[str, tf.Tensor]],
  anchor_boxes: Mapping[str, tf.Tensor],
  image_shape: tf.Tensor,
) -> Tuple[List[tf.Tensor], List[tf.Tensor]]:
  """Every anchor's clipped box and class scores, level by level.

  Decoding and scoring are v1's (`MultilevelDetectionGenerator.
  _decode_multilevel_outputs` with box_coder_weights None) on tensors of the
  same shapes, level by level: the scores are bitwise v1's (a sigmoid of only the
  promising logits would not be: Eigen computes some elements of a tensor in
  vector registers and the tail in scalar code, which differ in the last bit).

  Args:
    outputs: {'cls_outputs': {level: [B, H, W, C * A]}, 'box_outputs':
      {level: [B, H, W, 4 * A]}}; C counts the background class 0.
    anchor_boxes: str(level) -> [B, H, W, 4 * A] or [H, W, 4 * A].
    image_shape: [B, 2] height and width boxes are clipped to.

  Returns:
    (boxes, scores): per level in level order, [B, N_l, 4] (y1, x1, y2, x2
    pixels) and [B, N_l, C], anchors in v1's order.
  """
  box_ops = model_garden.load('box_ops')
  image_shape = tf.cast(image_shape, tf.float32)
  all_boxes, all_scores = [], []
  for level in sorted(outputs['box_outputs'], key=int):
    raw_boxes = tf.cast(outputs['box_outputs'][level], tf.float32)
    raw_scores = tf.cast(outputs['cls_outputs'][level], tf.float32)
    batch_size = tf.shape(raw_boxes)[0]
    num_classes = raw_scores.shape[-1] // (raw_boxes.shape[-1] // 4)
    anchors = tf.cast(anchor_boxes[level], tf.float32)
    if anchors.shape.rank not in (3, 4):
      raise ValueError(
        f'anchor_boxes[{level!r}] must have rank 3 or 4 ([B,] H, W, 4 * A), '
        f'got shape {anchors.shape}.'
      )
    if anchors.shape.rank == 3:
      # Tiled, not broadcast: see the module docstring (grappler fusion).
      anchors = tf.tile(anchors[None], [batch_size, 1, 1, 1])
    all_boxes.append(
      box_ops.clip_boxes(
        box_ops.decode_boxes(
          tf.reshape(raw_boxes, [batch_size, -1, 4]), tf.reshape(anchors, [batch_size, -1, 4])
        ),
        tf.expand_dims(image_shape, axis=1),
      )
    )
    all_scores.append(tf.sigmoid(tf.reshape(raw_scores, [batch_size, -1, num_classes])))
  return all_boxes, all_scores


def _sorted_candidates(
  boxes: List[tf.Tensor],
  scores: List[tf.Tensor],
  score_threshold: tf.Tensor,
  pre_nms_top_k: tf.Tensor,
  dense_above: tf.Tensor,
) -> Dict[str, tf.Tensor]:
  """The (image, anchor, class) triples scoring above the threshold, sorted.

  Few candidates (at most `dense_above` per image on average) are found level by
  level and sorted; many (an untrained model's, or a threshold of 0) would make
  that sort cost seconds, so then each (image, class) takes its top
  `pre_nms_top_k` anchors with `tf.math.top_k` first, as v1 does, which is the
  same selection in the same order.

  Args:
    boxes, scores: from `_decoded`, per level [B, N_l, 4] and [B, N_l, C].

  Returns:
    {'image_ids': [M] int32, 'classes': [M] int32 (1..C-1), 'scores': [M],
    'boxes': [M, 4]}, sorted by image, class, then score descending with ties in
    anchor order (v1's top_k order).
  """
  above = [level_scores > score_threshold for level_scores in scores]
  count = tf.add_n([tf.math.count_nonzero(a[..., 1:], dtype=tf.int32) for a in above])
  batch_size, num_classes = tf.shape(scores[0])[0], scores[0].shape[-1]

  def sparse():
    found = {'image_ids': [], 'classes': [], 'scores': [], 'boxes': []}
    for level_boxes, level_scores, level_above in zip(boxes, scores, above):
      where = tf.where(level_above)  # [M_l, 3]: image, anchor, class
      where = tf.boolean_mask(where, where[:, 2] > 0)  # background class 0 dropped
      found['image_ids'].append(tf.cast(where[:, 0], tf.int32))
      found['classes'].append(tf.cast(where[:, 2], tf.int32))
      found['scores'].append(tf.gather_nd(level_scores, where))
      found['boxes'].append(tf.gather_nd(level_boxes, where[:, :2]))
    candidates = {key: tf.concat(values, axis=0) for key, values in found.items()}
    group = candidates['image_ids'] * num_classes + candidates['classes']
    # Score descending, then (image, class); both sorts are stable, so equal
    # scores stay in anchor order.
    order = tf.argsort(candidates['scores'], direction='DESCENDING', stable=True)
    order = tf.gather(order, tf.argsort(tf.gather(group, order), stable=True))
    return {key: tf.gather(value, order) for key, value in candidates.items()}

  def dense():
    foreground = tf.concat([level_scores[..., 1:] for level_scores in scores], axis=1)
    per_class = tf.transpose(foreground, [0, 2, 1])  # [B, C - 1, N]
    k = tf.minimum(pre_nms_top_k, tf.shape(per_class)[-1])
    top_scores, top_anchors = tf.math.top_k(per_class, k=k)  # ties: lower anchor first
    where = tf.where(top_scores > score_threshold)  # [M, 3]: image, class - 1, rank
    image_ids = tf.cast(where[:, 0], tf.int32)
    anchors = tf.stack([image_ids, tf.gather_nd(top_anchors, where)], axis=1)
    return {
      'image_ids': image_ids,
      'classes': tf.cast(where[:, 1], tf.int32) + 1,
      'scores': tf.gather_nd(top_scores, where),
      'boxes': tf.gather_nd(tf.concat(boxes, axis=1), anchors),
    }

  return tf.cond(count > dense_above * batch_size, dense, sparse)


def _run_starts(keys: tf.Tensor) -> tf.Tensor:
  """[M] bool: True where a run of equal consecutive keys starts."""
  return tf.concat([tf.ones_like(keys[:1], tf.bool), keys[1:] != keys[:-1]], axis=0)


def _rank_in_run(is_start: tf.Tensor) -> tf.Tensor:
  """[M] int32: position of each element within its run of equal keys."""
  positions = tf.range(tf.size(is_start))
  run_starts = tf.boolean_mask(positions, is_start)
  return positions - tf.gather(run_starts, tf.cumsum(tf.cast(is_start, tf.int32)) - 1)


def _largest_float32_below(value: float) -> np.float32:
  return np.nextafter(np.float32(value), np.float32(-np.inf))


def _class_aware_nms(
  candidates: Dict[str, tf.Tensor],
  batch_size: tf.Tensor,
  num_classes: int,
  pre_nms_top_k: tf.Tensor,
  kernel_iou_threshold: tf.Tensor,
  max_num_detections: tf.Tensor,
) -> Dict[str, tf.Tensor]:
  """Per-class top-k, NMS per (image, class), merge.

  Args:
    candidates: as `_sorted_candidates` returns them.
    batch_size: scalar B.
    num_classes: C, background included.
    pre_nms_top_k, max_num_detections: scalars, as in `generate_detections_fast`.
    kernel_iou_threshold: `_largest_float32_below(nms_iou_threshold)`: the
      kernel suppresses IoU > it, v1 IoU >= nms_iou_threshold.

  Returns:
    The detections dict (see `generate_detections_fast`).
  """
  group = candidates['image_ids'] * num_classes + candidates['classes']
  # v1 takes each class's top pre_nms_top_k before its NMS drops all-zero boxes.
  keep = (_rank_in_run(_run_starts(group)) < pre_nms_top_k) & tf.reduce_any(
    candidates['boxes'] > 0.0, axis=-1
  )
  group = tf.boolean_mask(group, keep)
  candidates = {key: tf.boolean_mask(value, keep) for key, value in candidates.items()}
  candidate_boxes, candidate_scores = candidates['boxes'], candidates['scores']

  starts = tf.cast(tf.where(_run_starts(group))[:, 0], tf.int32)
  ends = tf.concat([starts[1:], tf.shape(group)], axis=0)
  kept = tf.TensorArray(
    tf.int32, size=tf.size(starts), infer_shape=False, element_shape=tf.TensorShape([None])
  )
  for i in tf.range(tf.size(starts)):
    start, end = starts[i], ends[i]
    selected = tf.image.non_max_suppression(
      candidate_boxes[start:end],
      candidate_scores[start:end],
      max_output_size=max_num_detections,
      iou_threshold=kernel_iou_threshold,
    )
    kept = kept.write(i, selected + start)
  kept = kept.concat()  # [S] candidate indices, by image, class, then score

  # Per image, the best max_num_detections; top_k keeps ties in (class, NMS)
  # order, as v1's top_k over its concatenated per-class results does.
  kept_per_image = tf.RaggedTensor.from_value_rowids(
    kept, tf.gather(candidates['image_ids'], kept), nrows=batch_size
  )
  kept_scores = tf.gather(candidate_scores, kept_per_image).to_tensor(default_value=-np.inf)
  kept_dense = kept_per_image.to_tensor(default_value=0)
  num_out = tf.minimum(max_num_detections, tf.shape(kept_dense)[1])
  chosen = tf.gather(
    kept_dense, tf.math.top_k(kept_scores, k=num_out).indices, batch_dims=1
  )  # [B, num_out] candidate indices
  num_detections = tf.minimum(tf.cast(kept_per_image.row_lengths(), tf.int32), max_num_detections)
  valid = tf.range(num_out)[None, :] < num_detections[:, None]

  def padded(values):
    """Zeros past num_detections, padded to max_num_detections."""
    trailing = values.shape.rank - 2
    mask = tf.reshape(valid, [batch_size, num_out] + [1] * trailing)
    values = tf.where(mask, values, tf.zeros_like(values))
    return tf.pad(values, [[0, 0], [0, max_num_detections - num_out]] + [[0, 0]] * trailing)

  return {
    'detection_boxes': padded(tf.gather(candidate_boxes, chosen)),
    'detection_scores': padded(tf.gather(candidate_scores, chosen)),
    'detection_classes': padded(tf.gather(candidates['classes'], chosen)),
    'num_detections': num_detections,
  }


# Settings are tensors, so one trace serves them all. No reduce_retracing: its
# shape-generalised traces would lose the static shapes (anchor rank, equal
# shapes for grappler's fusions) the decoding relies on to equal v1's.
@tf.function
def _generate_detections(
  outputs,
  anchor_boxes,
  image_shape,
  pre_nms_top_k,
  score_threshold,
  kernel_iou_threshold,
  max_num_detections,
  dense_above,
):
  """generate_detections_fast in a graph (see the module docstring: decoding)."""
  some_level = next(iter(outputs['box_outputs']))
  num_classes = outputs['cls_outputs'][some_level].shape[-1] // (
    outputs['box_outputs'][some_level].shape[-1] // 4
  )
  boxes, scores = _decoded(outputs, anchor_boxes, image_shape)
  return _class_aware_nms(
    _sorted_candidates(boxes, scores, score_threshold, pre_nms_top_k, dense_above),
    tf.shape(outputs['box_outputs'][some_level])[0],
    num_classes,
    pre_nms_top_k,
    kernel_iou_threshold,
    max_num_detections,
  )


def generate_detections_fast(
  outputs: Mapping[str, Mapping[str, tf.Tensor]],
  anchor_boxes: Mapping[str, tf.Tensor],
  image_shape: tf.Tensor,
  pre_nms_top_k: int = 5000,
  pre_nms_score_threshold: float = 0.05,
  nms_iou_threshold: float = 0.5,
  max_num_detections: int = 100,
  dense_candidates_per_image: int = DENSE_CANDIDATES_PER_IMAGE,
) -> Dict[str, tf.Tensor]:
  """Decodes raw RetinaNet outputs and runs class-aware NMS (v1's detections, fast).

  Args:
    outputs: {'cls_outputs': {level: [B, H, W, C * A]}, 'box_outputs': {level:
      [B, H, W, 4 * A]}} as returned by `RetinaNetModel.call`; C counts the
      background class 0, which is ignored.
    anchor_boxes: str(level) -> [B, H, W, 4 * A] anchors in pixels (y1, x1, y2,
      x2); unbatched [H, W, 4 * A] anchors are shared by the batch.
    image_shape: [B, 2] height and width of the (scaled, unpadded) image; boxes
      are clipped to it.
    pre_nms_top_k: per class, at most this many top-scoring anchors are NMS
      candidates.
    pre_nms_score_threshold: candidates score strictly above this.
    nms_iou_threshold: a box is suppressed by a higher-scoring box of the same
      class with IoU >= this.
    max_num_detections: detections kept per image.
    dense_candidates_per_image: above this many candidates per image (on
      average over the batch), each class's top pre_nms_top_k are taken with
      top_k first, as v1 does, instead of sorting every candidate (same
      detections; see `_sorted_candidates`).

  Returns:
    dict with detection_boxes [B, max, 4] float32 (pixels, y1 x1 y2 x2),
    detection_scores [B, max] float32 (descending), detection_classes [B, max]
    int32 (1..C-1) and num_detections [B] int32; entries past num_detections
    are zeros.

  Raises:
    ValueError: if max_num_detections or pre_nms_top_k is below 1.
  """
  if max_num_detections < 1:
    raise ValueError(f'max_num_detections must be >= 1, got {max_num_detections}.')
  if pre_nms_top_k < 1:
    raise ValueError(f'pre_nms_top_k must be >= 1, got {pre_nms_top_k}.')
  detections = _generate_detections(
    outputs,
    anchor_boxes,
    image_shape,
    tf.constant(pre_nms_top_k, tf.int32),
    tf.constant(pre_nms_score_threshold, tf.float32),
    tf.constant(_largest_float32_below(nms_iou_threshold), tf.float32),
    tf.constant(max_num_detections, tf.int32),
    tf.constant(dense_candidates_per_image, tf.int32),
  )
  # The static shapes v1 gives.
  for key, shape in (
    ('detection_boxes', [None, max_num_detections, 4]),
    ('detection_scores', [None, max_num_detections]),
    ('detection_classes', [None, max_num_detections]),
  ):
    detections[key] = tf.ensure_shape(detections[key], shape)
  return detections

"""RetinaNet: a backbone, an optional decoder and the RetinaNet head.

`RetinaNetModel.call` returns the raw per-level outputs (for the loss);
`RetinaNetModel.detect` / `generate_detections` turn them into boxes with
Model Garden's anchors and, unless nms_version='fast', its
`MultilevelDetectionGenerator` (decode, per-class NMS).

Model Garden is loaded (`model_garden.load`) only by the functions that use it:
importing any `official.vision` module imports all of its configs and tasks.
Building, calling and checkpointing the model never does.
"""

import collections
import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet import model_garden
from official_spinenet.modeling.heads import retinanet_head as retinanet_head_lib
from official_spinenet.modeling.layers import constructor_config
from official_spinenet.ops import postprocess

# Model Garden's RetinaNet inference defaults.
PRE_NMS_TOP_K = 5000
PRE_NMS_SCORE_THRESHOLD = 0.05
NMS_IOU_THRESHOLD = 0.5
MAX_NUM_DETECTIONS = 100
# 'fast' is ours (official_spinenet.ops.postprocess); the others are Model Garden's.
NMS_VERSIONS = ('fast', 'v1', 'v2', 'batched')
NMS_VERSION = 'fast'


def _by_level(outputs: Mapping[str, tf.Tensor]) -> 'collections.OrderedDict[str, tf.Tensor]':
  """The same dict ordered by numeric level (the order anchors are laid out in)."""
  return collections.OrderedDict((k, outputs[k]) for k in sorted(outputs, key=int))


def multilevel_anchor_boxes(
  image_size: Tuple[int, int],
  min_level: int,
  max_level: int,
  num_scales: int = 3,
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
  anchor_size: float = 4.0,
  batch_size=None,
) -> Dict[str, tf.Tensor]:
  """Anchors str(level) -> [H_l, W_l, 4 * A] (or [B, H_l, W_l, 4 * A] with batch_size).

  Eagerly, the anchors of each setting are built once and reused (building them
  op by op takes ~60 ms at 640 px, a tenth of an eager call's post-processing); in
  a graph they are built as ops, which grappler folds into constants.
  """
  if tf.executing_eagerly():
    settings = (tuple(int(s) for s in image_size), min_level, max_level, num_scales)
    boxes = _eager_anchor_boxes(*settings, tuple(aspect_ratios), anchor_size)
  else:
    boxes = _anchor_boxes(image_size, min_level, max_level, num_scales, aspect_ratios, anchor_size)
  if batch_size is not None:
    boxes = collections.OrderedDict(
      (k, tf.tile(v[None], [batch_size, 1, 1, 1])) for k, v in boxes.items()
    )
  return boxes


@functools.lru_cache(maxsize=16)
def _eager_anchor_boxes(*settings) -> 'collections.OrderedDict[str, tf.Tensor]':
  return _anchor_boxes(*settings)


def _anchor_boxes(
  image_size, min_level, max_level, num_scales, aspect_ratios, anchor_size
) -> 'collections.OrderedDict[str, tf.Tensor]':
  boxes = (
    model_garden.load('anchor')
    .Anchor(
      min_level=min_level,
      max_level=max_level,
      num_scales=num_scales,
      aspect_ratios=list(aspect_ratios),
      anchor_size=anchor_size,
      image_size=tuple(int(s) for s in image_size),
    )
    .multilevel_boxes
  )
  return _by_level({str(k): v for k, v in boxes.items()})


def generate_detections(
  outputs: Mapping[str, Mapping[str, tf.Tensor]],
  anchor_boxes: Mapping[str, tf.Tensor],
  image_shape: tf.Tensor,
  pre_nms_top_k: int = PRE_NMS_TOP_K,
  pre_nms_score_threshold: float = PRE_NMS_SCORE_THRESHOLD,
  nms_iou_threshold: float = NMS_IOU_THRESHOLD,
  max_num_detections: int = MAX_NUM_DETECTIONS,
  nms_version: str = NMS_VERSION,
) -> Dict[str, tf.Tensor]:
  """Decodes raw outputs with anchors and runs per-class NMS.

  Args:
    outputs: {'cls_outputs': {level: [B, H, W, C * A]}, 'box_outputs': {level:
      [B, H, W, 4 * A]}} as returned by `RetinaNetModel.call`.
    anchor_boxes: str(level) -> [B, H, W, 4 * A] anchors in pixels (y1, x1, y2, x2);
      unbatched [H, W, 4 * A] anchors are tiled over the batch.
    image_shape: [B, 2] height and width of the (scaled, unpadded) image; boxes are
      clipped to it.
    pre_nms_top_k, pre_nms_score_threshold, nms_iou_threshold, max_num_detections:
      NMS settings.
    nms_version: 'fast' (default; `official_spinenet.ops.postprocess`: Model
      Garden v1's detections in milliseconds on CPU, any batch size, not for
      TPU), or 'v1', 'v2', 'batched' (Model Garden's
      MultilevelDetectionGenerator; v1 needs a static batch size).

  Returns:
    dict with detection_boxes [B, max, 4] (pixels, y1 x1 y2 x2), detection_scores
    [B, max], detection_classes [B, max] and num_detections [B]. Only the first
    num_detections entries are detections ('fast' zeroes the rest).

  Raises:
    ValueError: for an unknown nms_version.
  """
  if nms_version not in NMS_VERSIONS:
    raise ValueError(f'nms_version must be one of {NMS_VERSIONS}, got {nms_version!r}.')
  settings = dict(
    pre_nms_top_k=pre_nms_top_k,
    pre_nms_score_threshold=pre_nms_score_threshold,
    nms_iou_threshold=nms_iou_threshold,
    max_num_detections=max_num_detections,
  )
  if nms_version == 'fast':
    return postprocess.generate_detections_fast(outputs, anchor_boxes, image_shape, **settings)
  cls_outputs = _by_level(outputs['cls_outputs'])
  box_outputs = _by_level(outputs['box_outputs'])
  batch_size = tf.shape(next(iter(box_outputs.values())))[0]
  anchors = collections.OrderedDict()
  for level in box_outputs:
    boxes = tf.cast(anchor_boxes[level], tf.float32)
    if boxes.shape.rank == 3:
      boxes = tf.tile(boxes[None], [batch_size, 1, 1, 1])
    anchors[level] = boxes
  generator = model_garden.load('detection_generator').MultilevelDetectionGenerator(
    apply_nms=True, nms_version=nms_version, **settings
  )
  results = generator(
    collections.OrderedDict((k, tf.cast(v, tf.float32)) for k, v in box_outputs.items()),
    collections.OrderedDict((k, tf.cast(v, tf.float32)) for k, v in cls_outputs.items()),
    anchors,
    tf.cast(image_shape, tf.float32),
  )
  return {
    key: results[key]
    for key in ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')
  }


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class RetinaNetModel(constructor_config.ConstructorConfig, tf_keras.Model):
  """Backbone -> decoder (None = identity) -> RetinaNetHead.

  `call(images, training)` returns {'cls_outputs': {str(level): logits},
  'box_outputs': {str(level): box deltas}}, raw, for levels head.min..max.
  """

  CONFIG_SERIALIZERS = {key: constructor_config.LAYER for key in ('backbone', 'head', 'decoder')}

  def __init__(
    self,
    backbone: tf_keras.Model,
    head: retinanet_head_lib.RetinaNetHead,
    decoder: Optional[tf_keras.layers.Layer] = None,
    num_scales: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_size: float = 4.0,
    **kwargs,
  ):
    """Initializes the model.

    Args:
      backbone: maps images to dict str(level) -> features.
      head: a RetinaNetHead; its min/max level are the model's.
      decoder: optional layer dict -> dict between backbone and head.
      num_scales: anchor scales per octave (for `detect`).
      aspect_ratios: anchor aspect ratios (for `detect`).
      anchor_size: anchor base size in units of the level stride (for `detect`).
      **kwargs: passed to tf_keras.Model.
    """
    self._store_config(locals(), aspect_ratios=list(aspect_ratios))
    super().__init__(**kwargs)
    expected = len(aspect_ratios) * num_scales
    anchors_per_location = head.get_config()['num_anchors_per_location']
    if anchors_per_location != expected:
      raise ValueError(
        f'The head predicts {anchors_per_location} anchors per location but '
        f'num_scales * len(aspect_ratios) = {num_scales} * {len(aspect_ratios)} = {expected}.'
      )
    self._backbone = backbone
    self._decoder = decoder
    self._head = head

  @property
  def backbone(self) -> tf_keras.Model:
    return self._backbone

  @property
  def decoder(self) -> Optional[tf_keras.layers.Layer]:
    return self._decoder

  @property
  def head(self) -> retinanet_head_lib.RetinaNetHead:
    return self._head

  @property
  def min_level(self) -> int:
    return self._head.levels[0]

  @property
  def max_level(self) -> int:
    return self._head.levels[-1]

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    """Sub-modules by checkpoint name: `Checkpoint(backbone=...)` restores into backbone."""
    items = dict(backbone=self._backbone, head=self._head)
    if self._decoder is not None:
      items['decoder'] = self._decoder
    return items

  def call(self, images, training=None) -> Dict[str, Dict[str, tf.Tensor]]:
    features = self._backbone(images, training=training)
    if self._decoder is not None:
      features = self._decoder(features, training=training)
    cls_outputs, box_outputs = self._head(features, training=training)
    return {'cls_outputs': cls_outputs, 'box_outputs': box_outputs}

  def anchor_boxes(self, image_size: Tuple[int, int], batch_size=None) -> Dict[str, tf.Tensor]:
    """The model's anchors for a (padded) input image size."""
    return multilevel_anchor_boxes(
      image_size,
      self.min_level,
      self.max_level,
      self._config_dict['num_scales'],
      self._config_dict['aspect_ratios'],
      self._config_dict['anchor_size'],
      batch_size,
    )

  def detect(
    self,
    images: tf.Tensor,
    image_shape: Optional[tf.Tensor] = None,
    anchor_boxes: Optional[Mapping[str, tf.Tensor]] = None,
    training: bool = False,
    **nms_settings,
  ) -> Dict[str, tf.Tensor]:
    """Runs the model and returns detections (see `generate_detections`).

    Args:
      images: [B, H, W, 3] with static H and W (unless anchor_boxes is given).
      image_shape: [B, 2] unpadded image size (e.g. labels['image_info'][:, 1, :]);
        defaults to the full input size.
      anchor_boxes: optional anchors (e.g. labels['anchor_boxes']); default: built
        from the model's anchor settings for the input size.
      training: BN mode (normally False).
      **nms_settings: keyword arguments of `generate_detections` (pre_nms_top_k,
        pre_nms_score_threshold, nms_iou_threshold, max_num_detections, nms_version).

    Returns:
      The raw outputs plus detection_boxes, detection_scores, detection_classes and
      num_detections.
    """
    return self.detections_from_outputs(
      self(images, training=training), images, image_shape, anchor_boxes, **nms_settings
    )

  def detections_from_outputs(
    self,
    outputs: Mapping[str, Mapping[str, tf.Tensor]],
    images: tf.Tensor,
    image_shape: Optional[tf.Tensor] = None,
    anchor_boxes: Optional[Mapping[str, tf.Tensor]] = None,
    **nms_settings,
  ) -> Dict[str, tf.Tensor]:
    """`detect` after the forward pass: outputs (of this model on images) -> detections."""
    batch_size = tf.shape(images)[0]
    if anchor_boxes is None:
      height, width = images.shape[1], images.shape[2]
      if height is None or width is None:
        raise ValueError(
          f'detect() needs a static image size or anchor_boxes; got images of shape {images.shape}.'
        )
      anchor_boxes = self.anchor_boxes((height, width))
    if image_shape is None:
      image_shape = tf.tile(tf.cast(tf.shape(images)[1:3], tf.float32)[None], [batch_size, 1])
    detections = generate_detections(outputs, anchor_boxes, image_shape, **nms_settings)
    return {**outputs, **detections}

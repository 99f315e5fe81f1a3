"""COCO box and mask evaluation with pycocotools, fed batch by batch from the eval loop.

`COCOEvaluator.update` takes the detections of one batch as the model returns
them (boxes in the pixels of the resized, padded model input) together with
labels['image_info'], maps the boxes back to original-image pixels and keeps
them as numpy arrays: cheap enough to call on the host after every eval step.
`result` runs pycocotools' COCOeval over the images seen so far and returns
the twelve standard metrics, per-class AP and counts.

Ground truth comes from a COCO instances JSON, a COCO instances dict (e.g.
`COCOEvaluator.from_tfrecords`, which scans the eval TFRecords), or, for boxes
only, from the `labels['groundtruths']` dicts of Model Garden's retinanet
parser (boxes in original-image pixels, y1 x1 y2 x2, padded with -1; `areas`
from the tf.Example, i.e. the JSON's `area`; crowd boxes kept with `is_crowds`).

With include_mask, `update` also takes Mask R-CNN's per-detection crop masks,
pastes each into the original image (`instance_masks.paste_masks`) and keeps it
as compressed RLE; `result` then runs COCOeval a second time with iouType
'segm' and reports those metrics with a 'mask_' prefix. The two evaluations
score separate result sets, as COCO's two results files would: boxes with
their box areas, masks with their mask areas (pycocotools' loadRes of a segm
results file), so the box metrics do not change with include_mask.

Undefined metrics are -1.0, pycocotools' convention: an area range with no
ground truth (e.g. APl when no object is large) or, for `AP/<class>`, a class
with no ground truth in the evaluated images. With no detections at all,
every defined metric is 0.0.
"""

import contextlib
import io
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
import tensorflow as tf

from official_spinenet.data import retinanet_input
from official_spinenet.evaluation import instance_masks
from official_spinenet.utils import files

# COCOeval.stats, in order.
METRIC_NAMES = (
  'AP',
  'AP50',
  'AP75',
  'APs',
  'APm',
  'APl',
  'ARmax1',
  'ARmax10',
  'ARmax100',
  'ARs',
  'ARm',
  'ARl',
)
UNDEFINED = -1.0
MASK_PREFIX = 'mask_'

_DETECTION_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')


def _to_numpy(value: Any) -> np.ndarray:
  """A numpy array from a numpy array, a list or an eager tf.Tensor."""
  return np.asarray(value.numpy() if hasattr(value, 'numpy') else value)


def _check_shape(name: str, array: np.ndarray, expected: Sequence[Optional[int]]) -> None:
  """Raises ValueError naming `name` unless array's shape matches (None: any size)."""
  if array.ndim != len(expected) or any(
    e is not None and s != e for s, e in zip(array.shape, expected)
  ):
    wanted = '[' + ', '.join('?' if e is None else str(e) for e in expected) + ']'
    raise ValueError(f'{name} must have shape {wanted}, got {list(array.shape)}.')


def _capture_stdout(fn, *args, **kwargs) -> Tuple[Any, str]:
  """Calls a pycocotools function; returns its result and what it printed."""
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    result = fn(*args, **kwargs)
  return result, buffer.getvalue().rstrip()


def _coco_from_dataset(dataset: Mapping[str, Any]) -> coco_lib.COCO:
  """A pycocotools COCO over an instances dict, indexed quietly."""
  coco = coco_lib.COCO()
  coco.dataset = dict(dataset)
  _capture_stdout(coco.createIndex)
  return coco


def _check_coco(coco_gt: coco_lib.COCO, source: str, include_mask: bool) -> None:
  """Raises ValueError naming source unless it is a COCO instances set (with masks)."""
  missing = [k for k in ('images', 'annotations', 'categories') if k not in coco_gt.dataset]
  if missing:
    raise ValueError(f'{source} has no {missing}.')
  if include_mask:
    unmasked = [a.get('id') for a in coco_gt.dataset['annotations'] if 'segmentation' not in a]
    if unmasked:
      raise ValueError(
        f'{source} has annotations without a segmentation (ids {unmasked[:10]}): '
        'mask evaluation needs one on every annotation.'
      )


def _load_annotations(annotation_file: str) -> coco_lib.COCO:
  if not os.path.isfile(annotation_file):
    raise ValueError(f'COCO annotation file {annotation_file!r} does not exist.')
  try:
    coco_gt, _ = _capture_stdout(coco_lib.COCO, annotation_file)
  except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
    raise ValueError(
      f'COCO annotation file {annotation_file!r} is not a COCO instances JSON: {e}'
    ) from e
  return coco_gt


# The features check_annotations_match_records reads (no image decoding).
_RECORD_FEATURES = {
  'image/source_id': tf.io.FixedLenFeature([], tf.string, ''),
  'image/height': tf.io.FixedLenFeature([], tf.int64, 0),
  'image/width': tf.io.FixedLenFeature([], tf.int64, 0),
  **{
    f'image/object/bbox/{k}': tf.io.VarLenFeature(tf.float32)
    for k in ('ymin', 'xmin', 'ymax', 'xmax')
  },
}
# Record boxes are normalised floats: a box matches an annotation to within this many pixels.
_BOX_TOLERANCE = 1.5


def _scan_records(file_pattern: str, max_records: int) -> List[Dict[str, Any]]:
  """[{'id', 'height', 'width', 'boxes' [n, 4] x1 y1 x2 y2 pixels}] of the first records."""

  def parse(serialized):
    example = tf.io.parse_single_example(serialized, _RECORD_FEATURES)
    return {
      k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in example.items()
    }

  records = []
  dataset = tf.data.TFRecordDataset(retinanet_input.list_files(file_pattern)).map(parse)
  for example in dataset.take(max_records).as_numpy_iterator():
    height, width = int(example['image/height']), int(example['image/width'])
    box = [example[f'image/object/bbox/{k}'] for k in ('xmin', 'ymin', 'xmax', 'ymax')]
    scale = np.asarray([width, height, width, height], np.float64)
    records.append(
      {
        'id': example['image/source_id'].decode('utf-8', 'replace'),
        'height': height,
        'width': width,
        'boxes': np.stack(box, axis=-1).astype(np.float64) * scale,
      }
    )
  return records


def _record_problem(record: Mapping[str, Any], coco_gt: coco_lib.COCO) -> Optional[str]:
  """Why one record does not match the annotation file (None if it does)."""
  try:
    image_id = int(record['id'])
  except ValueError:
    return f'source id {record["id"]!r} is not an integer COCO image id'
  image = coco_gt.imgs.get(image_id)
  if image is None:
    return f'image id {image_id} is not in it'
  if (image.get('height'), image.get('width')) != (record['height'], record['width']):
    return (
      f"image {image_id} is {record['height']}x{record['width']} in the records, "
      f"{image.get('height')}x{image.get('width')} in the file"
    )
  boxes = np.asarray(
    [
      [x, y, x + w, y + h]
      for x, y, w, h in (a['bbox'] for a in coco_gt.imgToAnns.get(image_id, []))
    ],
    np.float64,
  ).reshape([-1, 4])
  for box in record['boxes']:
    if not len(boxes) or np.abs(boxes - box).max(axis=1).min() > _BOX_TOLERANCE:
      return f'image {image_id}: the records\' box {np.round(box, 1).tolist()} is not in the file'
  return None


def check_annotations_match_records(
  annotation_file: str, file_pattern: str, max_records: int = 500
) -> None:
  """Refuses an annotation file that does not describe the eval records (before training).

  Reads only the ids, sizes and boxes of the first max_records records (no
  image decoding) and checks that the annotation file has each image id, with
  the same size and every box. Evaluating with another split's file (whose ids
  may overlap, e.g. both numbered from 1) scores AP near 0 without an error.

  Raises:
    ValueError: naming both files, if the annotation file is not a COCO JSON or
      most scanned records do not match it.
  """
  coco_gt = _load_annotations(annotation_file)
  _check_coco(coco_gt, f'COCO annotation file {annotation_file!r}', include_mask=False)
  try:
    records = _scan_records(file_pattern, max_records)
  except tf.errors.OpError as e:
    raise ValueError(f'Cannot read the eval records {file_pattern!r}: {e.message}') from e
  problems = [p for p in (_record_problem(r, coco_gt) for r in records) if p]
  # A few records may differ (e.g. boxes clipped on conversion); most must match.
  if records and len(problems) * 2 > len(records):
    raise ValueError(
      f'The annotation file {annotation_file!r} does not describe the eval records '
      f'{file_pattern!r}: {len(problems)} of the {len(records)} records read do not match it '
      f'(e.g. {problems[0]}). Is it the annotation file of another split?'
    )


def original_image_boxes(boxes: np.ndarray, image_info: np.ndarray) -> np.ndarray:
  """Maps boxes from model-input pixels back to original-image pixels.

  The parser resized the image by image_info[:, 2] and cropped it at
  image_info[:, 3] (input = original * scale - offset); this undoes both and
  clips to the original size image_info[:, 0].

  Args:
    boxes: [B, N, 4] y1, x1, y2, x2 in model-input pixels.
    image_info: [B, 4, 2] rows original size, scaled size, scale, offset.

  Returns:
    [B, N, 4] float64 y1, x1, y2, x2 in original-image pixels.
  """
  image_info = image_info.astype(np.float64)
  scale = np.tile(image_info[:, 2], [1, 2])[:, None, :]  # [B, 1, 4]: y, x, y, x
  offset = np.tile(image_info[:, 3], [1, 2])[:, None, :]
  size = np.tile(image_info[:, 0], [1, 2])[:, None, :]
  return np.clip((boxes.astype(np.float64) + offset) / scale, 0.0, size)


class COCOEvaluator:
  """Accumulates detections batch by batch and computes COCO box (and mask) metrics.

  Usage:
    evaluator = COCOEvaluator('instances_val2017.json')
    for images, labels in eval_dataset:
      detections = eval_step(images, labels)
      evaluator.update(detections, labels['image_info'],
                       labels['groundtruths']['source_id'])
    metrics = evaluator.result()
    evaluator.write_json(os.path.join(model_dir, 'metrics.json'))

  Mask R-CNN: COCOEvaluator('instances_val2017.json', include_mask=True), or
  COCOEvaluator.from_tfrecords('val-*.tfrecord', include_mask=True) without a
  JSON, and detections that also carry 'detection_masks'.
  """

  def __init__(
    self,
    annotation_file: Optional[str] = None,
    per_category_metrics: bool = True,
    category_names: Optional[Mapping[int, str]] = None,
    include_mask: bool = False,
    groundtruth: Optional[Mapping[str, Any]] = None,
    mask_paste: str = 'detectron',
  ):
    """Initializes the evaluator.

    Args:
      annotation_file: COCO instances JSON with the ground truth. If None (and
        no `groundtruth`), the ground truth comes from the `groundtruths`
        given to `update` (boxes only).
      per_category_metrics: also report `AP/<class name>` (and, with masks,
        `mask_AP/<class name>`) for every category.
      category_names: category id -> name for the `AP/<name>` keys. Default:
        the ground truth's categories; without a file or dict, 'class_<id>'
        for the categories seen in the ground truth. Without a file or dict,
        the ids given here are the evaluated categories.
      include_mask: also evaluate instance masks (iouType 'segm'); needs
        `detection_masks` in every update and ground truth with a
        `segmentation` per annotation (from annotation_file or groundtruth).
      groundtruth: instead of annotation_file, a COCO instances dict
        {'images', 'annotations', 'categories'} (e.g. from
        `instance_masks.groundtruth_from_tfrecords`).
      mask_paste: how crop masks are pasted, one of
        instance_masks.PASTE_METHODS: 'detectron' (Model Garden's COCO
        evaluator, the published numbers) or 'exact' (pixel-centre sampling).

    Raises:
      ValueError: if annotation_file does not exist or is not a COCO JSON, both
        annotation_file and groundtruth are given, groundtruth is not a COCO
        instances dict, or include_mask without ground truth masks.
    """
    if annotation_file and groundtruth is not None:
      raise ValueError('Give the ground truth as annotation_file or groundtruth, not both.')
    if mask_paste not in instance_masks.PASTE_METHODS:
      raise ValueError(
        f'mask_paste must be one of {instance_masks.PASTE_METHODS}, got {mask_paste!r}.'
      )
    self._per_category_metrics = per_category_metrics
    self._include_mask = include_mask
    self._mask_paste = mask_paste
    self._coco_gt = None
    self._groundtruth_source = 'the groundtruths given to update()'
    if annotation_file:
      self._groundtruth_source = f'the annotation file {annotation_file!r}'
      self._coco_gt = _load_annotations(annotation_file)
      _check_coco(self._coco_gt, f'COCO annotation file {annotation_file!r}', include_mask)
    elif groundtruth is not None:
      self._groundtruth_source = 'the ground truth given'
      if not isinstance(groundtruth, Mapping):
        raise ValueError(f'groundtruth must be a COCO instances dict, got {type(groundtruth)}.')
      self._coco_gt = _coco_from_dataset(groundtruth)
      _check_coco(self._coco_gt, 'groundtruth', include_mask)
    elif include_mask:
      raise ValueError(
        'Mask evaluation needs ground truth masks: give annotation_file (a COCO JSON with '
        'segmentations) or build the evaluator with COCOEvaluator.from_tfrecords.'
      )
    if category_names is not None:
      self._category_names = {int(k): str(v) for k, v in category_names.items()}
    elif self._coco_gt is not None:
      self._category_names = {
        c['id']: c.get('name', f"class_{c['id']}") for c in self._coco_gt.dataset['categories']
      }
    else:
      self._category_names = None
    self.reset()

  @classmethod
  def from_tfrecords(
    cls,
    file_pattern: str,
    per_category_metrics: bool = True,
    category_names: Optional[Mapping[int, str]] = None,
    include_mask: bool = False,
    mask_paste: str = 'detectron',
  ) -> 'COCOEvaluator':
    """An evaluator whose ground truth is scanned from the eval TFRecords now.

    See `instance_masks.groundtruth_from_tfrecords` (its ValueErrors name the
    file); category_names names the categories there and in the metrics.
    """
    groundtruth = instance_masks.groundtruth_from_tfrecords(
      file_pattern, include_mask=include_mask, category_names=category_names
    )
    evaluator = cls(
      per_category_metrics=per_category_metrics,
      include_mask=include_mask,
      groundtruth=groundtruth,
      mask_paste=mask_paste,
    )
    evaluator._groundtruth_source = f'the ground truth scanned from {file_pattern!r}'
    return evaluator

  @property
  def include_mask(self) -> bool:
    return self._include_mask

  def reset(self) -> None:
    """Forgets every image, detection and ground truth seen so far."""
    self._image_ids: List[int] = []
    self._seen = set()
    # Detections as [n, 7] rows: image id, x, y, w, h, score, class.
    self._detections: List[np.ndarray] = []
    # With masks: one compressed RLE `counts` per detection row, in row order,
    # and each image's (height, width); bytes, never full masks, between updates.
    self._mask_counts: List[bytes] = []
    self._image_sizes: Dict[int, Tuple[int, int]] = {}
    self._gt_images: List[Dict[str, Any]] = []
    self._gt_annotations: List[Dict[str, Any]] = []

  @property
  def num_images(self) -> int:
    return len(self._image_ids)

  @property
  def num_detections(self) -> int:
    return int(sum(len(d) for d in self._detections))

  def update(
    self,
    detections: Mapping[str, Any],
    image_info: Any,
    source_ids: Any,
    groundtruths: Optional[Mapping[str, Any]] = None,
  ) -> None:
    """Adds one batch (or several, concatenated) of detections.

    Args:
      detections: detection_boxes [B, N, 4] (y1, x1, y2, x2 in model-input
        pixels), detection_scores [B, N], detection_classes [B, N] (category
        ids) and num_detections [B]; with include_mask also detection_masks
        [B, N, mh, mw] (foreground probabilities over each box, Mask R-CNN's
        output) and optionally detection_outer_boxes [B, N, 4] (the boxes the
        masks cover, if not detection_boxes); other keys are ignored. Numpy
        arrays or eager tensors.
      image_info: [B, 4, 2] labels['image_info'].
      source_ids: [B] COCO image ids (labels['groundtruths']['source_id']).
      groundtruths: labels['groundtruths'] (batched); needed, and only used,
        when the evaluator has no annotation file.

    Raises:
      ValueError: for a missing key or a malformed shape (naming it), an image
        id not in the annotation file or already evaluated since reset(), or
        missing groundtruths without an annotation file.
    """
    missing = [k for k in _DETECTION_KEYS if k not in detections]
    if missing:
      raise ValueError(f'detections lack {missing}; got keys {sorted(detections)}.')
    boxes, scores, classes, counts = (_to_numpy(detections[k]) for k in _DETECTION_KEYS)
    image_info, source_ids = _to_numpy(image_info), _to_numpy(source_ids)
    _check_shape('detection_boxes', boxes, [None, None, 4])
    batch_size, num_boxes = boxes.shape[:2]
    _check_shape('detection_scores', scores, [batch_size, num_boxes])
    _check_shape('detection_classes', classes, [batch_size, num_boxes])
    _check_shape('num_detections', counts, [batch_size])
    _check_shape('image_info', image_info, [batch_size, 4, 2])
    _check_shape('source_ids', source_ids, [batch_size])
    mask_inputs = self._mask_inputs(detections, boxes)
    if np.any(image_info[:, 2] <= 0):
      raise ValueError(
        f'image_info[:, 2] (the resize scale) must be positive, got {image_info[:, 2].tolist()}.'
      )
    image_ids = [int(i) for i in source_ids]
    self._check_new_image_ids(image_ids)
    if self._coco_gt is None:
      if groundtruths is None:
        raise ValueError(
          'This evaluator has no annotation file: update() needs the '
          "groundtruths (labels['groundtruths'])."
        )
      self._add_groundtruths(groundtruths, image_ids)

    valid = np.arange(num_boxes)[None, :] < counts[:, None]  # [B, N]
    original_boxes = original_image_boxes(boxes, image_info)
    if mask_inputs is not None:
      masks, mask_boxes = mask_inputs
      mask_boxes = original_image_boxes(mask_boxes, image_info)
      self._add_masks(masks, mask_boxes, valid, image_info, image_ids)
    y1, x1, y2, x2 = np.moveaxis(original_boxes[valid], -1, 0)
    image_column = np.repeat(np.asarray(image_ids, np.float64), valid.sum(axis=1))
    self._detections.append(
      np.stack(
        [image_column, x1, y1, x2 - x1, y2 - y1, scores[valid], classes[valid]], axis=1
      ).astype(np.float64)
    )
    self._image_ids.extend(image_ids)
    self._seen.update(image_ids)

  def _mask_inputs(
    self, detections: Mapping[str, Any], boxes: np.ndarray
  ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(detection_masks, the boxes they cover), checked, if the evaluator evaluates masks.

    The masks cover detection_outer_boxes when the model gives them (Model
    Garden's MaskRCNNModel with outer_boxes_scale > 1), else detection_boxes.
    """
    if not self._include_mask:
      return None
    if 'detection_masks' not in detections:
      raise ValueError(
        "This evaluator evaluates masks (include_mask=True): detections lack 'detection_masks'; "
        f'got keys {sorted(detections)}.'
      )
    masks = _to_numpy(detections['detection_masks'])
    _check_shape('detection_masks', masks, [*boxes.shape[:2], None, None])
    if masks.shape[2] < 1 or masks.shape[3] < 1:
      raise ValueError(f'detection_masks must have masks of at least 1x1, got {list(masks.shape)}.')
    if 'detection_outer_boxes' not in detections:
      return masks, boxes
    outer_boxes = _to_numpy(detections['detection_outer_boxes'])
    _check_shape('detection_outer_boxes', outer_boxes, list(boxes.shape))
    return masks, outer_boxes

  def _add_masks(
    self,
    masks: np.ndarray,
    boxes: np.ndarray,
    valid: np.ndarray,
    image_info: np.ndarray,
    image_ids: Sequence[int],
  ) -> None:
    """Pastes the valid detections' masks into their original images, kept as RLE.

    Args:
      masks: [B, N, mh, mw] crop masks.
      boxes: [B, N, 4] y1, x1, y2, x2 in original-image pixels.
      valid: [B, N] which detections count.
      image_info: [B, 4, 2]; row 0 is the original height and width.
      image_ids: B image ids.
    """
    sizes = [(int(round(h)), int(round(w))) for h, w in image_info[:, 0]]
    if self._coco_gt is not None:
      for image_id, size in zip(image_ids, sizes):
        image = self._coco_gt.imgs[image_id]
        if (image['height'], image['width']) != size:
          raise ValueError(
            f'image_info gives image {image_id} the size {size}, but '
            f"{self._groundtruth_source} has {(image['height'], image['width'])}."
          )
    for b, (height, width) in enumerate(sizes):
      self._mask_counts.extend(
        instance_masks.paste_masks(
          masks[b][valid[b]], boxes[b][valid[b]], height, width, self._mask_paste
        )
      )
      self._image_sizes[image_ids[b]] = (height, width)

  def _check_new_image_ids(self, image_ids: Sequence[int]) -> None:
    repeated = sorted({i for i in image_ids if i in self._seen or image_ids.count(i) > 1})
    if repeated:
      raise ValueError(
        f'Image ids {repeated[:10]} were given twice since reset(): each '
        'image must be evaluated once (is the eval dataset repeated?).'
      )
    if self._coco_gt is not None:
      unknown = [i for i in image_ids if i not in self._coco_gt.imgs]
      if unknown:
        raise ValueError(
          f'Image ids {unknown[:10]} of the evaluated records are not in '
          f'{self._groundtruth_source} (is it the annotation file of another split?).'
        )

  def _add_groundtruths(self, groundtruths: Mapping[str, Any], image_ids: Sequence[int]) -> None:
    """Converts one batch of parser groundtruths to COCO images and annotations."""
    missing = [
      k
      for k in ('source_id', 'height', 'width', 'num_detections', 'boxes', 'classes')
      if k not in groundtruths
    ]
    if missing:
      raise ValueError(f'groundtruths lack {missing}; got keys {sorted(groundtruths)}.')
    batch_size = len(image_ids)
    gt = {k: _to_numpy(v) for k, v in groundtruths.items() if not isinstance(v, Mapping)}
    # num_detections is tf.shape(classes) per image: [B, 1] once batched.
    gt['num_detections'] = gt['num_detections'].reshape(-1)
    for key in ('source_id', 'height', 'width', 'num_detections'):
      _check_shape(f"groundtruths['{key}']", gt[key], [batch_size])
    _check_shape("groundtruths['boxes']", gt['boxes'], [batch_size, None, 4])
    max_instances = gt['boxes'].shape[1]
    for key in ('classes', 'areas', 'is_crowds'):
      if key in gt:
        _check_shape(f"groundtruths['{key}']", gt[key], [batch_size, max_instances])
    if [int(i) for i in gt['source_id']] != list(image_ids):
      raise ValueError(
        f"groundtruths['source_id'] {gt['source_id'].tolist()} differs from "
        f'source_ids {list(image_ids)}.'
      )
    for b, image_id in enumerate(image_ids):
      self._gt_images.append(
        {'id': image_id, 'height': int(gt['height'][b]), 'width': int(gt['width'][b])}
      )
      for k in range(min(int(gt['num_detections'][b]), max_instances)):
        y1, x1, y2, x2 = (float(v) for v in gt['boxes'][b, k])
        self._gt_annotations.append(
          {
            'id': len(self._gt_annotations) + 1,  # COCOeval takes id 0 for "no match"
            'image_id': image_id,
            'category_id': int(gt['classes'][b, k]),
            'bbox': [x1, y1, x2 - x1, y2 - y1],
            'area': float(gt['areas'][b, k]) if 'areas' in gt else (x2 - x1) * (y2 - y1),
            'iscrowd': int(gt['is_crowds'][b, k]) if 'is_crowds' in gt else 0,
          }
        )

  def _ground_truth(self) -> coco_lib.COCO:
    """The given ground truth's COCO, or one built from the groundtruths seen."""
    if self._coco_gt is not None:
      return self._coco_gt
    category_ids = (
      sorted(self._category_names)
      if self._category_names is not None
      else sorted({a['category_id'] for a in self._gt_annotations})
    )
    names = self._category_names or {}
    return _coco_from_dataset(
      {
        'images': list(self._gt_images),
        'annotations': list(self._gt_annotations),
        'categories': [{'id': i, 'name': names.get(i, f'class_{i}')} for i in category_ids],
      }
    )

  def _rows(self) -> np.ndarray:
    return np.concatenate(self._detections) if self._detections else np.zeros([0, 7])

  def _segmentations(self) -> List[Dict[str, Any]]:
    """The detections' masks as compressed RLE dicts (str counts), in row order."""
    return [
      {'size': list(self._image_sizes[int(image_id)]), 'counts': counts.decode('ascii')}
      for image_id, counts in zip(self._rows()[:, 0], self._mask_counts)
    ]

  def _results(self, coco_gt: coco_lib.COCO, iou_type: str) -> coco_lib.COCO:
    """The detections as a COCO results object (an empty one without detections).

    'bbox': the boxes (area: box area). 'segm': the masks only, so that
    loadRes gives each the area and tight box of its mask, as it does for a
    COCO segm results file.
    """
    rows = self._rows()
    if len(rows) and iou_type == 'bbox':
      return _capture_stdout(coco_gt.loadRes, rows)[0]
    if len(rows):
      results = [
        {'image_id': int(r[0]), 'category_id': int(r[6]), 'score': float(r[5]), 'segmentation': m}
        for r, m in zip(rows, self._segmentations())
      ]
      return _capture_stdout(coco_gt.loadRes, results)[0]
    # loadRes cannot take an empty list: an empty result set evaluates to 0.
    return _coco_from_dataset(
      {
        'images': list(coco_gt.dataset['images']),
        'annotations': [],
        'categories': list(coco_gt.dataset['categories']),
      }
    )

  def result(self) -> Dict[str, float]:
    """COCO box (and mask) metrics over the images given to update() since reset().

    Returns:
      {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'ARmax1', 'ARmax10',
      'ARmax100', 'ARs', 'ARm', 'ARl'} (COCOeval.stats), 'AP/<class name>'
      per category if per_category_metrics, 'num_images', 'num_detections';
      with include_mask also the same metrics of the masks (iouType 'segm')
      prefixed 'mask_': 'mask_AP', ..., 'mask_ARl', 'mask_AP/<class name>'.
      Undefined values are -1.0 (see the module docstring).

    Raises:
      ValueError: if update() was not called since reset().
    """
    if not self._image_ids:
      raise ValueError('No images to evaluate: call update() first.')
    coco_gt = self._ground_truth()
    metrics = self._evaluate(coco_gt, 'bbox', prefix='')
    if self._include_mask:
      metrics.update(self._evaluate(coco_gt, 'segm', prefix=MASK_PREFIX))
    metrics['num_images'] = len(self._image_ids)
    metrics['num_detections'] = self.num_detections
    return metrics

  def _evaluate(self, coco_gt: coco_lib.COCO, iou_type: str, prefix: str) -> Dict[str, float]:
    """One COCOeval run: its stats and per-class AP, keys prefixed."""
    evaluation = cocoeval.COCOeval(coco_gt, self._results(coco_gt, iou_type), iouType=iou_type)
    evaluation.params.imgIds = sorted(self._image_ids)
    _capture_stdout(evaluation.evaluate)
    _capture_stdout(evaluation.accumulate)
    _, summary = _capture_stdout(evaluation.summarize)  # fills evaluation.stats
    logging.info('COCO %s evaluation of %d images:\n%s', iou_type, len(self._image_ids), summary)
    metrics = {prefix + name: float(value) for name, value in zip(METRIC_NAMES, evaluation.stats)}
    if self._per_category_metrics:
      metrics.update(
        {prefix + key: value for key, value in self._per_category_ap(evaluation).items()}
      )
    return metrics

  def _per_category_ap(self, evaluation: cocoeval.COCOeval) -> Dict[str, float]:
    """AP over IoU 0.5:0.95, all areas, 100 detections, for each category.

    The per-class slice of COCOeval.eval['precision'] [T, R, K, A, M]; -1
    entries (no ground truth of the class) are left out, and a class with
    only -1 entries gets -1.
    """
    names = self._category_names or {}
    precision = evaluation.eval['precision']
    result = {}
    for k, category_id in enumerate(evaluation.params.catIds):
      values = precision[:, :, k, 0, -1]
      values = values[values > -1]
      name = names.get(category_id, f'class_{category_id}')
      result[f'AP/{name}'] = float(np.mean(values)) if values.size else UNDEFINED
    return result

  def detections_json(self) -> List[Dict[str, Any]]:
    """The detections in COCO results format (original-image pixels).

    With include_mask each result also has its 'segmentation', a compressed
    RLE with str counts (what pycocotools' loadRes and the COCO server take).
    """
    results = [
      {
        'image_id': int(r[0]),
        'category_id': int(r[6]),
        'bbox': [float(v) for v in r[1:5]],
        'score': float(r[5]),
      }
      for r in self._rows()
    ]
    if self._include_mask:
      for result, segmentation in zip(results, self._segmentations()):
        result['segmentation'] = segmentation
    return results

  def write_json(self, path: str, metrics: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Writes metrics (default: result()) to path atomically and returns them."""
    metrics = dict(self.result() if metrics is None else metrics)
    files.write_json_atomically(metrics, path)
    return metrics

  def write_detections_json(self, path: str) -> None:
    """Writes the detections in COCO results format to path atomically."""
    files.write_json_atomically(self.detections_json(), path)

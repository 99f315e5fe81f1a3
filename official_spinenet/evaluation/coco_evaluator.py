"""COCO box evaluation with pycocotools, fed batch by batch from the eval loop.

`COCOEvaluator.update` takes the detections of one batch as the model returns
them (boxes in the pixels of the resized, padded model input) together with
labels['image_info'], maps the boxes back to original-image pixels and keeps
them as numpy arrays: cheap enough to call on the host after every eval step.
`result` runs pycocotools' COCOeval over the images seen so far and returns
the twelve standard metrics, per-class AP and counts.

Ground truth comes from a COCO instances JSON, or, without one, from the
`labels['groundtruths']` dicts of Model Garden's retinanet parser (boxes in
original-image pixels, y1 x1 y2 x2, padded with -1; `areas` from the
tf.Example, i.e. the JSON's `area`; crowd boxes kept with `is_crowds`).

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


def _load_annotations(annotation_file: str) -> coco_lib.COCO:
  if not os.path.isfile(annotation_file):
    raise ValueError(f'COCO annotation file {annotation_file!r} does not exist.')
  try:
    coco_gt, _ = _capture_stdout(coco_lib.COCO, annotation_file)
  except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
    raise ValueError(
      f'COCO annotation file {annotation_file!r} is not a COCO instances JSON: {e}'
    ) from e
  missing = [k for k in ('images', 'annotations', 'categories') if k not in coco_gt.dataset]
  if missing:
    raise ValueError(f'COCO annotation file {annotation_file!r} has no {missing}.')
  return coco_gt


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
  """Accumulates detections batch by batch and computes COCO box metrics.

  Usage:
    evaluator = COCOEvaluator('instances_val2017.json')
    for images, labels in eval_dataset:
      detections = eval_step(images, labels)
      evaluator.update(detections, labels['image_info'],
                       labels['groundtruths']['source_id'])
    metrics = evaluator.result()
    evaluator.write_json(os.path.join(model_dir, 'metrics.json'))
  """

  def __init__(
    self,
    annotation_file: Optional[str] = None,
    per_category_metrics: bool = True,
    category_names: Optional[Mapping[int, str]] = None,
  ):
    """Initializes the evaluator.

    Args:
      annotation_file: COCO instances JSON with the ground truth. If None, the
        ground truth comes from the `groundtruths` given to `update`.
      per_category_metrics: also report `AP/<class name>` for every category.
      category_names: category id -> name for the `AP/<name>` keys. Default:
        the annotation file's categories; without a file, 'class_<id>' for
        the categories seen in the ground truth. Without a file, the ids
        given here are the evaluated categories.

    Raises:
      ValueError: if annotation_file does not exist or is not a COCO JSON.
    """
    self._annotation_file = annotation_file
    self._per_category_metrics = per_category_metrics
    self._coco_gt = _load_annotations(annotation_file) if annotation_file else None
    if category_names is not None:
      self._category_names = {int(k): str(v) for k, v in category_names.items()}
    elif self._coco_gt is not None:
      self._category_names = {c['id']: c['name'] for c in self._coco_gt.dataset['categories']}
    else:
      self._category_names = None
    self.reset()

  def reset(self) -> None:
    """Forgets every image, detection and ground truth seen so far."""
    self._image_ids: List[int] = []
    self._seen = set()
    # Detections as [n, 7] rows: image id, x, y, w, h, score, class.
    self._detections: List[np.ndarray] = []
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
        ids) and num_detections [B]; other keys are ignored. Numpy arrays or
        eager tensors.
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
    y1, x1, y2, x2 = np.moveaxis(original_image_boxes(boxes, image_info)[valid], -1, 0)
    image_column = np.repeat(np.asarray(image_ids, np.float64), valid.sum(axis=1))
    self._detections.append(
      np.stack(
        [image_column, x1, y1, x2 - x1, y2 - y1, scores[valid], classes[valid]], axis=1
      ).astype(np.float64)
    )
    self._image_ids.extend(image_ids)
    self._seen.update(image_ids)

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
          f'Image ids {unknown[:10]} are not in the annotation file {self._annotation_file!r}.'
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
    """The annotation file's COCO, or one built from the groundtruths seen."""
    if self._coco_gt is not None:
      return self._coco_gt
    category_ids = (
      sorted(self._category_names)
      if self._category_names is not None
      else sorted({a['category_id'] for a in self._gt_annotations})
    )
    names = self._category_names or {}
    coco_gt = coco_lib.COCO()
    coco_gt.dataset = {
      'images': list(self._gt_images),
      'annotations': list(self._gt_annotations),
      'categories': [{'id': i, 'name': names.get(i, f'class_{i}')} for i in category_ids],
    }
    _capture_stdout(coco_gt.createIndex)
    return coco_gt

  def _results(self, coco_gt: coco_lib.COCO) -> coco_lib.COCO:
    """The detections as a COCO results object (an empty one without detections)."""
    rows = np.concatenate(self._detections) if self._detections else np.zeros([0, 7])
    if len(rows):
      return _capture_stdout(coco_gt.loadRes, rows)[0]
    # loadRes cannot take an empty list: an empty result set evaluates to 0.
    coco_dt = coco_lib.COCO()
    coco_dt.dataset = {
      'images': list(coco_gt.dataset['images']),
      'annotations': [],
      'categories': list(coco_gt.dataset['categories']),
    }
    _capture_stdout(coco_dt.createIndex)
    return coco_dt

  def result(self) -> Dict[str, float]:
    """COCO box metrics over the images given to update() since reset().

    Returns:
      {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'ARmax1', 'ARmax10',
      'ARmax100', 'ARs', 'ARm', 'ARl'} (COCOeval.stats), 'AP/<class name>'
      per category if per_category_metrics, 'num_images', 'num_detections'.
      Undefined values are -1.0 (see the module docstring).

    Raises:
      ValueError: if update() was not called since reset().
    """
    if not self._image_ids:
      raise ValueError('No images to evaluate: call update() first.')
    coco_gt = self._ground_truth()
    evaluation = cocoeval.COCOeval(coco_gt, self._results(coco_gt), iouType='bbox')
    evaluation.params.imgIds = sorted(self._image_ids)
    _capture_stdout(evaluation.evaluate)
    _capture_stdout(evaluation.accumulate)
    _, summary = _capture_stdout(evaluation.summarize)  # fills evaluation.stats
    logging.info('COCO evaluation of %d images:\n%s', len(self._image_ids), summary)
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluation.stats)}
    if self._per_category_metrics:
      metrics.update(self._per_category_ap(evaluation))
    metrics['num_images'] = len(self._image_ids)
    metrics['num_detections'] = self.num_detections
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
    """The detections in COCO results format (original-image pixels)."""
    rows = np.concatenate(self._detections) if self._detections else np.zeros([0, 7])
    return [
      {
        'image_id': int(r[0]),
        'category_id': int(r[6]),
        'bbox': [float(v) for v in r[1:5]],
        'score': float(r[5]),
      }
      for r in rows
    ]

  def write_json(self, path: str, metrics: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Writes metrics (default: result()) to path atomically and returns them."""
    metrics = dict(self.result() if metrics is None else metrics)
    files.write_json_atomically(metrics, path)
    return metrics

  def write_detections_json(self, path: str) -> None:
    """Writes the detections in COCO results format to path atomically."""
    files.write_json_atomically(self.detections_json(), path)

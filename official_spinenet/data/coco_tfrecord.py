"""Converts a COCO instances JSON and its image folder to sharded TFRecords.

The records use the layout of `official_spinenet.data.tfexample` (the one
tf-models-official's `TfExampleDecoder` reads). Unlike tf-models-official's
`create_coco_tf_record.py`, nothing is dropped quietly: a missing or
undecodable image, malformed JSON, or a box outside its image stops the run
with a `ValueError` that names the file, image id and annotation id. The only
annotations left out are boxes of zero width or height (they cannot be
matched to any anchor); each one is logged and counted.

Conventions kept from COCO:
  * category ids are written as they are in the JSON (COCO's 1..90);
  * crowd annotations are kept, with `is_crowd = 1`;
  * `area` is the JSON's `area` (the segmentation area, which the COCO
    evaluator uses for its small / medium / large split);
  * `source_id` is the COCO image id, so evaluation can match detections.
"""

import dataclasses
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple
import warnings

from absl import logging
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import tensorflow as tf

from official_spinenet.data import tfexample

# A box may overshoot the image by this many pixels (rounding in annotation
# tools; real COCO has a few such boxes). Such boxes are clipped to the image.
BOX_TOLERANCE_PIXELS = 1.0

# Encoded images kept byte for byte; anything else (CMYK JPEG, 16-bit or
# palette PNG, BMP, TIFF, ...) is converted to RGB and re-encoded as PNG, so
# that `tf.io.decode_image(..., channels=3)` sees exactly the pixels PIL saw.
_KEPT_FORMATS = {'JPEG': 'jpeg', 'PNG': 'png'}
_KEPT_MODES = ('RGB', 'L')


class TextProgress:
  """A dependency-free progress report for long loops.

  On a terminal it redraws one line on stderr (`\\r`); otherwise (log files,
  CI) it logs through absl at every 10% so logs are not flooded.
  """

  def __init__(self, total: int, description: str, enabled: bool = True):
    """Starts the report.

    Args:
      total: number of steps expected.
      description: text shown before the counts.
      enabled: when False every method is a no-op.
    """
    self._total = max(int(total), 0)
    self._description = description
    self._enabled = enabled and self._total > 0
    self._done = 0
    self._start = time.monotonic()
    self._last_draw = 0.0
    self._last_logged_decile = 0
    self._tty = self._enabled and sys.stderr.isatty()

  def _line(self) -> str:
    elapsed = max(time.monotonic() - self._start, 1e-9)
    percent = 100.0 * self._done / self._total
    return (
      f'{self._description}: {self._done}/{self._total} '
      f'[{percent:5.1f}%] {self._done / elapsed:.1f}/s'
    )

  def update(self, steps: int = 1) -> None:
    """Records `steps` finished steps and redraws at most twice a second."""
    if not self._enabled:
      return
    self._done += steps
    if self._tty:
      now = time.monotonic()
      if now - self._last_draw >= 0.5 or self._done >= self._total:
        sys.stderr.write('\r' + self._line())
        sys.stderr.flush()
        self._last_draw = now
    else:
      decile = (10 * self._done) // self._total
      if decile > self._last_logged_decile:
        self._last_logged_decile = decile
        logging.info('%s', self._line())

  def close(self) -> None:
    """Ends the progress line."""
    if self._tty:
      sys.stderr.write('\n')
      sys.stderr.flush()


@dataclasses.dataclass(frozen=True)
class CocoInstances:
  """A validated COCO instances file.

  Attributes:
    annotation_file: the path it was read from (used in error messages).
    images: the `images` entries, in file order.
    annotations_by_image: image id -> its `annotations` entries, in file order.
    category_names: category id -> category name.
  """

  annotation_file: str
  images: List[Dict[str, Any]]
  annotations_by_image: Dict[int, List[Dict[str, Any]]]
  category_names: Dict[int, str]


class ConvertedImage(NamedTuple):
  """What `coco_image_to_example` made of one image.

  Attributes:
    example: the `tf.train.Example`.
    num_objects: annotations written to it.
    num_skipped: zero-width or zero-height boxes left out (logged).
    reencoded: True when the image bytes were re-encoded as PNG.
  """

  example: tf.train.Example
  num_objects: int
  num_skipped: int
  reencoded: bool


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
  """Result of `convert_coco_to_tfrecords`.

  Attributes:
    tfrecord_files: the shard paths written.
    tfrecord_pattern: a glob matching exactly those shards.
    num_images: images (= records) written.
    num_objects: annotations written.
    num_skipped_annotations: zero-size boxes left out.
    num_reencoded_images: images re-encoded to PNG.
  """

  tfrecord_files: List[str]
  tfrecord_pattern: str
  num_images: int
  num_objects: int
  num_skipped_annotations: int
  num_reencoded_images: int


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _require_keys(entry: Any, keys: Sequence[str], what: str, annotation_file: str) -> None:
  if not isinstance(entry, dict):
    raise ValueError(f'{annotation_file}: {what} must be a JSON object, got {entry!r:.80}.')
  missing = [k for k in keys if k not in entry]
  if missing:
    raise ValueError(f'{annotation_file}: {what} is missing required key(s) {missing}.')


def _read_json(annotation_file: str) -> Dict[str, Any]:
  """Reads a JSON object, turning every failure into a ValueError."""
  if not os.path.isfile(annotation_file):
    raise ValueError(f'Annotation file {annotation_file} does not exist.')
  try:
    with open(annotation_file, 'rb') as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'Annotation file {annotation_file} is not valid JSON: {e}') from e
  if not isinstance(data, dict):
    raise ValueError(
      f'Annotation file {annotation_file} must hold a JSON object with '
      f'"images", "annotations" and "categories", got {type(data).__name__}.'
    )
  return data


def _parse_categories(data: Dict[str, Any], annotation_file: str) -> Dict[int, str]:
  """Returns category id -> name, checking ids are unique ints >= 1."""
  if not isinstance(data['categories'], list):
    raise ValueError(f'{annotation_file}: "categories" must be a list.')
  names = {}
  for category in data['categories']:
    _require_keys(category, ('id', 'name'), 'a category', annotation_file)
    category_id = category['id']
    # Class 0 is the background / padding class of the detection parsers.
    if not _is_int(category_id) or category_id < 1:
      raise ValueError(
        f'{annotation_file}: category id {category_id!r} must be an integer '
        '>= 1 (0 is reserved for the background class).'
      )
    if category_id in names:
      raise ValueError(f'{annotation_file}: category id {category_id} appears twice.')
    names[category_id] = str(category['name'])
  return names


def _parse_images(data: Dict[str, Any], annotation_file: str) -> List[Dict[str, Any]]:
  """Checks the `images` entries and that their ids are unique ints."""
  if not isinstance(data['images'], list):
    raise ValueError(f'{annotation_file}: "images" must be a list.')
  seen = set()
  for image in data['images']:
    _require_keys(
      image,
      ('id', 'file_name', 'height', 'width'),
      f'image {image.get("id", "?")!r}' if isinstance(image, dict) else 'an image',
      annotation_file,
    )
    image_id = image['id']
    # The COCO evaluator parses source_id back to an int.
    if not _is_int(image_id):
      raise ValueError(f'{annotation_file}: image id {image_id!r} must be an integer.')
    if image_id in seen:
      raise ValueError(f'{annotation_file}: image id {image_id} appears twice.')
    seen.add(image_id)
    for key in ('height', 'width'):
      if not _is_int(image[key]) or image[key] < 1:
        raise ValueError(
          f'{annotation_file}: image id {image_id} has {key} '
          f'{image[key]!r}; expected a positive integer.'
        )
  return data['images']


def _parse_annotations(
  data: Dict[str, Any],
  image_ids: set,
  category_names: Mapping[int, str],
  require_segmentation: bool,
  annotation_file: str,
) -> Dict[int, List[Dict[str, Any]]]:
  """Checks the `annotations` entries and groups them by image id."""
  if 'annotations' not in data:
    # COCO test-dev ships image_info files without annotations; converting
    # those for inference is legitimate, so this is a warning, not an error.
    logging.warning('%s has no "annotations" key: writing images without objects.', annotation_file)
    return {}
  if not isinstance(data['annotations'], list):
    raise ValueError(f'{annotation_file}: "annotations" must be a list.')
  keys = ['id', 'image_id', 'category_id', 'bbox']
  if require_segmentation:
    keys.append('segmentation')
  by_image = {}
  seen = set()
  for ann in data['annotations']:
    _require_keys(
      ann,
      keys,
      f'annotation {ann.get("id", "?")!r}' if isinstance(ann, dict) else 'an annotation',
      annotation_file,
    )
    ann_id = ann['id']
    if ann_id in seen:
      raise ValueError(f'{annotation_file}: annotation id {ann_id} appears twice.')
    seen.add(ann_id)
    if ann['image_id'] not in image_ids:
      raise ValueError(
        f'{annotation_file}: annotation id {ann_id} refers to image id '
        f'{ann["image_id"]!r}, which is not in "images".'
      )
    if ann['category_id'] not in category_names:
      raise ValueError(
        f'{annotation_file}: annotation id {ann_id} has category id '
        f'{ann["category_id"]!r}, which is not in "categories".'
      )
    bbox = ann['bbox']
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
      raise ValueError(
        f'{annotation_file}: annotation id {ann_id} has bbox {bbox!r}; '
        'expected [x, y, width, height] numbers.'
      )
    for key in ('area', 'iscrowd'):
      if key in ann and not _is_number(ann[key]):
        raise ValueError(
          f'{annotation_file}: annotation id {ann_id} has {key} {ann[key]!r}; expected a number.'
        )
    by_image.setdefault(ann['image_id'], []).append(ann)
  return by_image


def load_coco_instances(annotation_file: str, require_segmentation: bool = False) -> CocoInstances:
  """Reads and validates a COCO instances JSON file.

  Args:
    annotation_file: path of the JSON (e.g. `instances_val2017.json`).
    require_segmentation: also require a `segmentation` in every annotation
      (needed to write masks).

  Returns:
    The validated `CocoInstances`.

  Raises:
    ValueError: naming the file (and image / annotation id) if the file is
      missing, not JSON, lacks `images` or `categories`, or holds an entry
      with missing or ill-typed keys, duplicate ids or dangling references.
  """
  data = _read_json(annotation_file)
  for key in ('images', 'categories'):
    if key not in data:
      raise ValueError(
        f'Annotation file {annotation_file} has no "{key}" key; is it a COCO instances file?'
      )
  category_names = _parse_categories(data, annotation_file)
  images = _parse_images(data, annotation_file)
  annotations_by_image = _parse_annotations(
    data, {image['id'] for image in images}, category_names, require_segmentation, annotation_file
  )
  return CocoInstances(annotation_file, images, annotations_by_image, category_names)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
  """Rasterises a COCO segmentation (polygons, RLE or compressed RLE).

  Args:
    segmentation: a list of polygons `[[x0, y0, x1, y1, ...], ...]`, an
      uncompressed RLE `{'size': [h, w], 'counts': [int, ...]}` (crowd
      annotations) or a compressed RLE `{'size': [h, w], 'counts': str}`.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    `[height, width]` uint8 mask with values in {0, 1}.

  Raises:
    ValueError: if the segmentation is malformed or its size is not the
      image's.
  """
  if isinstance(segmentation, list):
    for polygon in segmentation:
      if (
        not isinstance(polygon, list) or len(polygon) % 2 or not all(_is_number(v) for v in polygon)
      ):
        raise ValueError(f'polygon {polygon!r:.80} is not a flat list of x, y numbers.')
    # Fewer than 3 points enclose nothing, and pycocotools would read a
    # 4-number list as a box, so such fragments are left out.
    polygons = [p for p in segmentation if len(p) >= 6]
    if not polygons:
      raise ValueError('segmentation has no polygon with at least 3 points.')
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  elif isinstance(segmentation, dict) and {'size', 'counts'} <= set(segmentation):
    if list(segmentation['size']) != [height, width]:
      raise ValueError(
        f'RLE size {segmentation["size"]} differs from the image size [{height}, {width}].'
      )
    counts = segmentation['counts']
    if isinstance(counts, list):
      rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(counts, (str, bytes)):
      rle = {
        'size': [height, width],
        'counts': counts.encode('ascii') if isinstance(counts, str) else counts,
      }
    else:
      raise ValueError(f'RLE counts must be a list or a string, got {type(counts).__name__}.')
  else:
    raise ValueError(
      f'segmentation {segmentation!r:.80} is neither a list of polygons nor '
      'an RLE dict with "size" and "counts".'
    )
  with warnings.catch_warnings():
    # pycocotools' Cython decoder trips a numpy 2 copy-keyword deprecation on
    # every call; it is harmless and not actionable by our users.
    warnings.simplefilter('ignore', DeprecationWarning)
    mask = mask_utils.decode(rle)
  return np.ascontiguousarray(mask, dtype=np.uint8)


def _image_context(image_info: Mapping[str, Any]) -> str:
  return f'image id {image_info["id"]} ({image_info["file_name"]!r})'


def load_image_bytes(image_dir: str, image_info: Mapping[str, Any]) -> Tuple[bytes, str, bool]:
  """Reads, fully decodes and checks one image file.

  Decoding everything (not just the header) is what catches truncated files
  here rather than in the middle of training.

  Args:
    image_dir: folder the `file_name` is relative to.
    image_info: a COCO `images` entry.

  Returns:
    `(encoded_bytes, image_format, reencoded)`: `image_format` is 'jpeg' or
    'png'; `reencoded` says the bytes are a PNG re-encoding (see
    `_KEPT_FORMATS`).

  Raises:
    ValueError: naming the path and image id if the file is missing, does
      not decode, or its size differs from the JSON's height and width.
  """
  path = os.path.join(image_dir, image_info['file_name'])
  if not os.path.isfile(path):
    raise ValueError(f'{_image_context(image_info)}: image file {path} does not exist.')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      size = image.size
      image_format = _KEPT_FORMATS.get(image.format)
      reencoded = image_format is None or image.mode not in _KEPT_MODES
      if reencoded:
        buffer = io.BytesIO()
        image.convert('RGB').save(buffer, format='PNG')
        data, image_format = buffer.getvalue(), 'png'
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
    raise ValueError(
      f'{_image_context(image_info)}: image file {path} does not decode as '
      f'an image: {type(e).__name__}: {e}'
    ) from e
  if size != (image_info['width'], image_info['height']):
    raise ValueError(
      f'{_image_context(image_info)}: image file {path} is {size[0]}x'
      f'{size[1]} (width x height) but the annotation file says '
      f'{image_info["width"]}x{image_info["height"]}.'
    )
  return data, image_format, reencoded


def coco_box_to_normalized(bbox: Sequence[float], height: int, width: int) -> Optional[np.ndarray]:
  """Converts a COCO `[x, y, w, h]` pixel box to normalised yxyx.

  Args:
    bbox: `[x, y, width, height]` in pixels, (x, y) the top-left corner.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    `[4]` float32 `[ymin, xmin, ymax, xmax]` in [0, 1], clipped to the image,
    or None if the box has zero width or height (after clipping).

  Raises:
    ValueError: if a value is not finite, the size is negative, or the box
      leaves the image by more than `BOX_TOLERANCE_PIXELS`.
  """
  x, y, w, h = (float(v) for v in bbox)
  if not all(np.isfinite([x, y, w, h])):
    raise ValueError(f'box {list(bbox)} has a non-finite value.')
  if w < 0 or h < 0:
    raise ValueError(f'box {list(bbox)} has a negative width or height.')
  tol = BOX_TOLERANCE_PIXELS
  if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
    raise ValueError(
      f'box [x, y, w, h] = {list(bbox)} lies outside the {width}x{height} '
      f'(width x height) image by more than {tol:g} pixel.'
    )
  xmin, ymin = max(x, 0.0), max(y, 0.0)
  xmax, ymax = min(x + w, float(width)), min(y + h, float(height))
  if xmax <= xmin or ymax <= ymin:
    return None
  return np.array([ymin / height, xmin / width, ymax / height, xmax / width], dtype=np.float32)


def coco_image_to_example(
  image_info: Mapping[str, Any],
  annotations: Sequence[Mapping[str, Any]],
  category_names: Mapping[int, str],
  image_dir: str,
  include_masks: bool = False,
) -> ConvertedImage:
  """Converts one COCO image and its annotations to a tf.Example.

  Args:
    image_info: a COCO `images` entry (`id`, `file_name`, `height`, `width`).
    annotations: its `annotations` entries (validated as by
      `load_coco_instances`).
    category_names: category id -> name.
    image_dir: folder the `file_name` is relative to.
    include_masks: also write one PNG mask per annotation.

  Returns:
    A `ConvertedImage`.

  Raises:
    ValueError: naming the image id and file (and annotation id) for a
      missing or undecodable image, a box outside the image or a malformed
      segmentation.
  """
  encoded, image_format, reencoded = load_image_bytes(image_dir, image_info)
  height, width = image_info['height'], image_info['width']
  boxes, classes, texts, crowd, areas, masks = [], [], [], [], [], []
  num_skipped = 0
  for ann in annotations:
    context = f'annotation id {ann["id"]} of {_image_context(image_info)}'
    try:
      box = coco_box_to_normalized(ann['bbox'], height, width)
    except ValueError as e:
      raise ValueError(f'{context}: {e}') from e
    if box is None:
      logging.warning('%s: box %s has zero width or height; left out.', context, ann['bbox'])
      num_skipped += 1
      continue
    boxes.append(box)
    classes.append(int(ann['category_id']))
    texts.append(category_names[ann['category_id']])
    crowd.append(int(bool(ann.get('iscrowd', 0))))
    bbox_w, bbox_h = float(ann['bbox'][2]), float(ann['bbox'][3])
    areas.append(float(ann.get('area', bbox_w * bbox_h)))
    if include_masks:
      try:
        mask = segmentation_to_mask(ann['segmentation'], height, width)
      except Exception as e:  # pylint: disable=broad-except
        # pycocotools raises TypeError / IndexError on odd inputs too.
        raise ValueError(f'{context}: bad segmentation: {e}') from e
      masks.append(tfexample.encode_png_mask(mask))
  example = tfexample.make_detection_example(
    encoded_image=encoded,
    image_format=image_format,
    height=height,
    width=width,
    source_id=image_info['id'],
    boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
    classes=classes,
    class_texts=texts,
    is_crowd=crowd,
    areas=areas,
    masks=masks if include_masks else None,
    filename=image_info['file_name'],
  )
  return ConvertedImage(example, len(boxes), num_skipped, reencoded)


def convert_coco_to_tfrecords(
  image_dir: str,
  annotation_file: str,
  output_prefix: str,
  num_shards: int = 8,
  include_masks: bool = False,
  max_images: Optional[int] = None,
  show_progress: bool = True,
) -> ConversionSummary:
  """Converts a COCO instances dataset to sharded TFRecord files.

  The JSON is validated completely before anything is written, and shards
  only appear under their final names once every image converted, so a
  failed run leaves no partial output behind.

  Args:
    image_dir: folder holding the images named in the JSON.
    annotation_file: COCO instances JSON.
    output_prefix: shards are written as
      `<output_prefix>-00000-of-<num_shards>.tfrecord`.
    num_shards: number of shards, >= 1. Record `i` goes to shard
      `i % num_shards`.
    include_masks: write instance masks (needed for Mask R-CNN).
    max_images: convert only the first `max_images` images of the JSON.
    show_progress: report progress on stderr.

  Returns:
    A `ConversionSummary`.

  Raises:
    ValueError: see `load_coco_instances` and `coco_image_to_example`; also
      for `num_shards` < 1 or `max_images` < 1.
  """
  if max_images is not None and max_images < 1:
    raise ValueError(f'max_images must be >= 1 when given, got {max_images}.')
  dataset = load_coco_instances(annotation_file, require_segmentation=include_masks)
  images = dataset.images[:max_images] if max_images else dataset.images
  num_objects = num_skipped = num_reencoded = 0
  progress = TextProgress(len(images), f'Converting {annotation_file}', enabled=show_progress)
  try:
    with tfexample.ShardedTFRecordWriter(output_prefix, num_shards) as writer:
      for image_info in images:
        converted = coco_image_to_example(
          image_info,
          dataset.annotations_by_image.get(image_info['id'], []),
          dataset.category_names,
          image_dir,
          include_masks,
        )
        writer.write(converted.example)
        num_objects += converted.num_objects
        num_skipped += converted.num_skipped
        num_reencoded += int(converted.reencoded)
        progress.update()
  finally:
    progress.close()
  summary = ConversionSummary(
    tfrecord_files=writer.paths,
    tfrecord_pattern=tfexample.shard_pattern(output_prefix, num_shards),
    num_images=len(images),
    num_objects=num_objects,
    num_skipped_annotations=num_skipped,
    num_reencoded_images=num_reencoded,
  )
  logging.info(
    'Wrote %d images with %d objects to %s (%d zero-size boxes left out, '
    '%d images re-encoded as PNG).',
    summary.num_images,
    summary.num_objects,
    summary.tfrecord_pattern,
    num_skipped,
    num_reencoded,
  )
  return summary

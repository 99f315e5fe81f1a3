"""Builds detection tf.Examples and writes them to sharded TFRecord files.

The feature layout is the one `official.vision.dataloaders.tf_example_decoder.
TfExampleDecoder` parses (and the one tf-models-official's own
`create_coco_tf_record.py` writes), so records made here feed the Model Garden
detection parsers unchanged:

| key                            | type        | content                            |
|--------------------------------|-------------|------------------------------------|
| image/encoded                  | bytes       | JPEG or PNG file bytes             |
| image/format                   | bytes       | b'jpeg' or b'png'                  |
| image/height, image/width      | int64       | pixels                             |
| image/source_id                | bytes       | image id as a decimal string       |
| image/filename                 | bytes       | original file name (informative)   |
| image/object/bbox/{ymin,...}   | float list  | normalised to [0, 1]               |
| image/object/class/label       | int64 list  | category ids >= 1 (0: background)  |
| image/object/class/text        | bytes list  | category names                     |
| image/object/is_crowd          | int64 list  | 0 or 1                             |
| image/object/area              | float list  | area in pixels (COCO 'area')       |
| image/object/mask              | bytes list  | one PNG per instance, values {0,1} |

Shards are named `<prefix>-00000-of-00004.tfrecord` and written under a
temporary name first (`utils.files.atomic_output`), so a reader never sees a
half-written shard.
"""

import contextlib
import io
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
import tensorflow as tf

from official_spinenet.utils import files

_IMAGE_FORMATS = ('jpeg', 'png')


def _bytes_list(values: Sequence[bytes]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _float_list(values: Sequence[float]) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _int64_list(values: Sequence[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _to_bytes(value: Union[str, bytes]) -> bytes:
  return value.encode('utf-8') if isinstance(value, str) else bytes(value)


def encode_png_mask(mask: np.ndarray) -> bytes:
  """Encodes one binary instance mask as a single-channel PNG.

  The decoder reads masks with `tf.io.decode_png(..., channels=1)` and casts
  them to float, and the Mask R-CNN parser treats them as {0, 1} masks, so the
  values stored are 0 and 1 (not 0 and 255).

  Args:
    mask: `[height, width]` array; any non-zero value counts as foreground.

  Returns:
    PNG file bytes of a `uint8` image with values in {0, 1}.

  Raises:
    ValueError: if `mask` is not two-dimensional.
  """
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f'A mask must have shape [height, width], got {mask.shape}.')
  buffer = io.BytesIO()
  # A 2-D uint8 array becomes a single-channel ('L') PNG.
  Image.fromarray((mask != 0).astype(np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


def _check_length(name: str, values: Sequence, expected: int) -> None:
  if len(values) != expected:
    raise ValueError(f'{name} has {len(values)} entries but there are {expected} boxes.')


def _check_boxes(boxes: np.ndarray) -> None:
  """Raises ValueError unless `boxes` is a valid `[N, 4]` normalised array."""
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'boxes must have shape [num_boxes, 4], got {boxes.shape}.')
  if not np.all(np.isfinite(boxes)):
    raise ValueError('boxes contain NaN or infinite values.')
  if boxes.size and (boxes.min() < 0.0 or boxes.max() > 1.0):
    raise ValueError(
      f'boxes must be normalised to [0, 1]; got values in [{boxes.min()}, {boxes.max()}].'
    )
  if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
    raise ValueError('boxes must be [ymin, xmin, ymax, xmax] with ymin <= ymax and xmin <= xmax.')


def _encode_masks(
  masks: Union[np.ndarray, Sequence[bytes]], num_boxes: int, height: int, width: int
) -> List[bytes]:
  """Returns one PNG per instance from arrays or already-encoded PNGs."""
  _check_length('masks', masks, num_boxes)
  encoded = []
  for mask in masks:
    if isinstance(mask, (bytes, bytearray)):
      encoded.append(bytes(mask))
      continue
    mask = np.asarray(mask)
    if mask.shape != (height, width):
      raise ValueError(
        f'Each mask must have the image shape ({height}, {width}), got {mask.shape}.'
      )
    encoded.append(encode_png_mask(mask))
  return encoded


def _image_format(image_format: str) -> str:
  """'jpeg' or 'png' ('jpg' accepted, any case); ValueError otherwise."""
  image_format = image_format.lower()
  if image_format == 'jpg':
    image_format = 'jpeg'
  if image_format not in _IMAGE_FORMATS:
    raise ValueError(f'image_format must be one of {_IMAGE_FORMATS}, got {image_format!r}.')
  return image_format


def _object_fields(
  boxes, classes, class_texts, is_crowd, areas, height: int, width: int
) -> Tuple[np.ndarray, List[int], Sequence, Sequence, Sequence]:
  """Checks the per-object arguments of `make_detection_example`; fills defaults.

  Returns:
    `([N, 4] float32 boxes, N class ids, N texts, N crowd flags, N areas)`.
  """
  boxes = np.asarray(boxes, dtype=np.float32)
  if boxes.size == 0:
    boxes = boxes.reshape(0, 4)  # an image without objects: [] -> [0, 4]
  _check_boxes(boxes)
  num_boxes = boxes.shape[0]
  _check_length('classes', classes, num_boxes)
  classes = [int(c) for c in classes]
  if any(c < 1 for c in classes):
    raise ValueError(f'Class ids must be >= 1 (0 is the background class), got {classes}.')
  if class_texts is None:
    class_texts = [b''] * num_boxes
  _check_length('class_texts', class_texts, num_boxes)
  if is_crowd is None:
    is_crowd = [0] * num_boxes
  _check_length('is_crowd', is_crowd, num_boxes)
  if areas is None:
    areas = ((boxes[:, 2] - boxes[:, 0]) * height * (boxes[:, 3] - boxes[:, 1]) * width).tolist()
  _check_length('areas', areas, num_boxes)
  return boxes, classes, class_texts, is_crowd, areas


def make_detection_example(
  *,
  encoded_image: bytes,
  image_format: str,
  height: int,
  width: int,
  source_id: Union[str, int],
  boxes: np.ndarray,
  classes: Sequence[int],
  class_texts: Optional[Sequence[Union[str, bytes]]] = None,
  is_crowd: Optional[Sequence[int]] = None,
  areas: Optional[Sequence[float]] = None,
  masks: Optional[Union[np.ndarray, Sequence[bytes]]] = None,
  filename: Optional[str] = None,
) -> tf.train.Example:
  """Builds a detection tf.Example in the TfExampleDecoder layout.

  Args:
    encoded_image: the encoded image file (JPEG or PNG bytes).
    image_format: 'jpeg' or 'png', the format of `encoded_image`.
    height: image height in pixels.
    width: image width in pixels.
    source_id: image id; the COCO evaluator parses it back to an int, so use
      the COCO image id.
    boxes: `[N, 4]` float array of `[ymin, xmin, ymax, xmax]` normalised to
      [0, 1] (the order `TfExampleDecoder` returns them in).
    classes: `N` category ids (>= 1; 0 is the background class).
    class_texts: optional `N` category names.
    is_crowd: optional `N` values in {0, 1}; defaults to all 0.
    areas: optional `N` areas in pixels; defaults to the box areas in pixels.
      COCO uses the segmentation area here, and the evaluator's small / medium
      / large split depends on it.
    masks: optional instance masks, either a `[N, height, width]` array (any
      non-zero value is foreground) or `N` PNG-encoded masks. When given, the
      example has an `image/object/mask` feature (`include_mask=True` in the
      decoder).
    filename: optional original file name, stored as `image/filename`.

  Returns:
    The `tf.train.Example`.

  Raises:
    ValueError: on an unknown image format, non-positive size, boxes that are
      not normalised `[N, 4]`, or per-object lists whose length is not `N`.
  """
  image_format = _image_format(image_format)
  if height <= 0 or width <= 0:
    raise ValueError(f'Image size must be positive, got {height}x{width}.')
  boxes, classes, class_texts, is_crowd, areas = _object_fields(
    boxes, classes, class_texts, is_crowd, areas, height, width
  )
  num_boxes = boxes.shape[0]
  feature = {
    'image/encoded': _bytes_list([encoded_image]),
    'image/format': _bytes_list([image_format.encode('ascii')]),
    'image/height': _int64_list([int(height)]),
    'image/width': _int64_list([int(width)]),
    'image/source_id': _bytes_list([_to_bytes(str(source_id))]),
    'image/object/bbox/ymin': _float_list(boxes[:, 0].tolist()),
    'image/object/bbox/xmin': _float_list(boxes[:, 1].tolist()),
    'image/object/bbox/ymax': _float_list(boxes[:, 2].tolist()),
    'image/object/bbox/xmax': _float_list(boxes[:, 3].tolist()),
    'image/object/class/label': _int64_list(classes),
    'image/object/class/text': _bytes_list([_to_bytes(t) for t in class_texts]),
    'image/object/is_crowd': _int64_list([int(bool(c)) for c in is_crowd]),
    'image/object/area': _float_list([float(a) for a in areas]),
  }
  if filename is not None:
    feature['image/filename'] = _bytes_list([_to_bytes(filename)])
  if masks is not None:
    feature['image/object/mask'] = _bytes_list(_encode_masks(masks, num_boxes, height, width))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def shard_path(output_prefix: str, shard_index: int, num_shards: int) -> str:
  """Returns the file name of one shard, e.g. `prefix-00001-of-00004.tfrecord`."""
  return f'{output_prefix}-{shard_index:05d}-of-{num_shards:05d}.tfrecord'


def shard_pattern(output_prefix: str, num_shards: int) -> str:
  """Returns a glob matching exactly the shards of one `num_shards` write.

  The shard count is part of the pattern so that stale shards from an earlier
  write with a different count are not picked up.
  """
  return f'{output_prefix}-*-of-{num_shards:05d}.tfrecord'


class _AbortedError(Exception):
  """Raised inside the writer's exit stack to make every shard discard its file."""


class ShardedTFRecordWriter:
  """Writes serialized records round-robin into `num_shards` TFRecord files.

  Record `i` goes to shard `i % num_shards`. Each shard is written through
  `utils.files.atomic_output` (a temporary name beside it) and renamed into
  place only by `close()`, so readers never see partial files. Leaving a `with`
  block through an exception (or `abort()`) deletes the temporary files instead.
  Paths may be local or `gs://`.

  Example:
    with ShardedTFRecordWriter('/data/train', 4) as writer:
      writer.write(example)
    writer.paths  # ['/data/train-00000-of-00004.tfrecord', ...]
  """

  def __init__(self, output_prefix: str, num_shards: int):
    """Opens the temporary shard files.

    Args:
      output_prefix: path prefix of the shards; missing directories are made.
      num_shards: number of shards, >= 1.

    Raises:
      ValueError: if `num_shards` < 1 or `output_prefix` names a directory.
    """
    if int(num_shards) != num_shards or num_shards < 1:
      raise ValueError(f'num_shards must be an integer >= 1, got {num_shards}.')
    if not output_prefix or output_prefix.endswith(os.sep):
      raise ValueError(f'output_prefix must be a file name prefix, got {output_prefix!r}.')
    self._paths = [shard_path(output_prefix, i, num_shards) for i in range(num_shards)]
    # Closing the stack closes each shard's writer, then renames its file into
    # place (callbacks run last-in first-out); an exception inside it removes them.
    self._shards = contextlib.ExitStack()
    self._writers = []
    self._closed = False
    try:
      for path in self._paths:
        writer = tf.io.TFRecordWriter(self._shards.enter_context(files.atomic_output(path)))
        self._shards.callback(writer.close)
        self._writers.append(writer)
    except BaseException:
      self.abort()
      raise
    self._num_records = 0

  @property
  def paths(self) -> List[str]:
    """The final shard paths (they exist only after `close()`)."""
    return list(self._paths)

  @property
  def num_records(self) -> int:
    """Number of records written so far."""
    return self._num_records

  def write(self, record: Union[bytes, tf.train.Example]) -> None:
    """Appends one record (a `tf.train.Example` or serialized bytes)."""
    if self._closed:
      raise ValueError('write() called on a closed ShardedTFRecordWriter.')
    if isinstance(record, tf.train.Example):
      record = record.SerializeToString()
    self._writers[self._num_records % len(self._writers)].write(record)
    self._num_records += 1

  def close(self) -> List[str]:
    """Flushes all shards and moves them to their final names.

    Returns:
      The final shard paths.
    """
    if not self._closed:
      self._closed = True
      self._shards.close()
    return self.paths

  def abort(self) -> None:
    """Closes and deletes the temporary shards; the final names are untouched."""
    if self._closed:
      return
    self._closed = True
    try:
      with self._shards:
        raise _AbortedError()
    except _AbortedError:
      pass

  def __enter__(self) -> 'ShardedTFRecordWriter':
    return self

  def __exit__(self, exc_type, exc_value, traceback) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

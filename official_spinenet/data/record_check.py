"""Checks of TFRecord files: their framing and CRCs, and the features our records carry.

A TFRecord file is a sequence of records, each framed as (little endian; TensorFlow's
tensorflow/core/lib/io/record_writer.cc)

  uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

TensorFlow's reader stops a pipeline at the first bad record with a `DataLossError` that
gives a byte offset but not the file. The functions here name the file, the record and
what is wrong with it:

- `first_record_problems(files)`: each file's first record header (12 bytes, pure Python:
  no TensorFlow op, so it may run before a distribution strategy exists).
- `data_error_message(error, file_patterns)`: after a DataLossError, a message naming the
  bad shard(s), what is wrong and the fix.
- `read_records(path)`: (index, offset, record) of every record; `CorruptFileError` at a bad one.
- `check_data(...)`: spinenet-check-data's per-file report (framing, tf.Example features,
  image decoding, boxes, image ids against a COCO annotation file).
- `skipped_records()`: records the input pipelines skipped (`InputConfig.skip_corrupt_records`).
"""

import concurrent.futures
import dataclasses
import os
import re
import struct
import threading
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from absl import logging
from google.protobuf import message as proto_message
import numpy as np
import tensorflow as tf

from official_spinenet.utils import files as file_utils
from official_spinenet.utils import tables

HEADER_BYTES = 12  # uint64 length + uint32 CRC of the length
FOOTER_BYTES = 4  # uint32 CRC of the data
BOX_FEATURES = tuple(f'image/object/bbox/{c}' for c in ('ymin', 'xmin', 'ymax', 'xmax'))
REQUIRED_FEATURES = {
  'detection': ('image/encoded', 'image/height', 'image/width')
  + BOX_FEATURES
  + ('image/object/class/label',),
  'classification': ('image/encoded', 'image/class/label'),
}
# What a file that is not a TFRecord usually is, by its first bytes.
_MAGIC = (
  (b'\x89PNG', 'a PNG image'),
  (b'\xff\xd8\xff', 'a JPEG image'),
  (b'GIF8', 'a GIF image'),
  (b'\x1f\x8b', 'gzip data (a compressed TFRecord? the input pipeline reads uncompressed ones)'),
  (b'PK\x03\x04', 'a zip archive'),
  (b'RIFF', 'a RIFF file (WebP image?)'),
  (b'BM', 'a BMP image'),
)
_ANNOTATION_NOTE = 'the annotation file'
_ERROR_OFFSET = re.compile(r'(?:corrupted|truncated) record at (\d+)')


def _crc_table() -> List[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # CRC-32C (Castagnoli), reflected
    table.append(crc)
  return table


_CRC_TABLE = _crc_table()


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C of `data` (pure Python: for headers and single records)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class FileProblem:
  """The first unreadable place of a TFRecord file.

  Attributes:
    path: the file.
    record: 0-based index of the bad record (the records before it read fine).
    offset: its byte offset.
    what: the problem, a predicate of the file ('is truncated after record 12 ...').
  """

  path: str
  record: int
  offset: int
  what: str

  def __str__(self) -> str:
    return f'{self.path} {self.what}'


class CorruptFileError(ValueError):
  """A TFRecord file that cannot be read to its end; `problem` says where and why."""

  def __init__(self, problem: FileProblem):
    super().__init__(str(problem))
    self.problem = problem


def _looks_like(head: bytes) -> str:
  for magic, name in _MAGIC:
    if head.startswith(magic):
      return f' (it looks like {name})'
  if head and all(32 <= b < 127 or b in b'\t\r\n' for b in head[:64]):
    return ' (it looks like text)'
  return ''


def _record_length(f, path: str, index: int, offset: int, size: int, check_data: bool) -> int:
  """The data length of the record at `offset`; CorruptFileError if its framing is bad.

  Args:
    f: the file, open for binary reading.
    path: its name, for the message.
    index: the record's 0-based index.
    offset: its byte offset (< size).
    size: the file's size in bytes.
    check_data: also read the data and check its CRC (else the header only).
  """
  f.seek(offset)
  header = f.read(HEADER_BYTES)
  remaining = size - offset
  after = f'after record {index - 1}' if index else 'inside its first record'
  if len(header) < HEADER_BYTES:
    what = f'is truncated {after}: {remaining} stray byte(s) at byte {offset}'
    if not index:
      what = f'is not a TFRecord file: {size} byte(s), less than one record header'
      what += _looks_like(header)
    raise CorruptFileError(FileProblem(path, index, offset, what))
  length, length_crc = struct.unpack('<QI', header)
  if masked_crc32c(header[:8]) != length_crc:
    what = f'has a CRC mismatch in the header of record {index} (byte {offset})'
    if not index:
      what = f'is not a TFRecord file{_looks_like(header)}: its first record header fails its CRC'
    raise CorruptFileError(FileProblem(path, index, offset, what))
  if HEADER_BYTES + length + FOOTER_BYTES > remaining:
    what = (
      f'is truncated {after}: record {index} at byte {offset} needs '
      f'{HEADER_BYTES + length + FOOTER_BYTES} bytes, {remaining} remain'
    )
    raise CorruptFileError(FileProblem(path, index, offset, what))
  if check_data:
    data = f.read(length + FOOTER_BYTES)
    if masked_crc32c(data[:length]) != struct.unpack('<I', data[length:])[0]:
      what = (
        f'has a CRC mismatch in the data of record {index} (bytes {offset}-'
        f'{offset + HEADER_BYTES + length + FOOTER_BYTES}: a bit flip or overwritten bytes)'
      )
      raise CorruptFileError(FileProblem(path, index, offset, what))
  return length


def first_record_problem(path: str) -> Optional[FileProblem]:
  """What is wrong with the header of the file's first record, or None (also for empty files).

  Reads 12 bytes: catches files that are not TFRecords (a PNG named .tfrecord) and
  files truncated inside their first record, not corruption further on.
  """
  size = tf.io.gfile.stat(path).length
  if not size:
    return None
  with tf.io.gfile.GFile(path, 'rb') as f:
    try:
      _record_length(f, path, 0, 0, size, check_data=False)
    except CorruptFileError as e:
      return e.problem
  return None


def first_record_problems(files: Sequence[str]) -> List[FileProblem]:
  """`first_record_problem` of each file (read in parallel: cheap on remote storage too)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    return [p for p in pool.map(first_record_problem, files) if p is not None]


def first_record(path: str) -> Optional[bytes]:
  """The data of the file's first record (None if the file is empty); CorruptFileError if
  its header is bad (its data CRC is not checked: cheap, pure Python file I/O)."""
  size = tf.io.gfile.stat(path).length
  if not size:
    return None
  with tf.io.gfile.GFile(path, 'rb') as f:
    length = _record_length(f, path, 0, 0, size, check_data=False)
    f.seek(HEADER_BYTES)
    return f.read(length)


def record_offsets(path: str) -> List[int]:
  """Byte offsets of the file's records, from their headers only; CorruptFileError if bad.

  Catches truncation, corrupt headers and files that are not TFRecords, not corrupt data
  (its CRC is not read).
  """
  size = tf.io.gfile.stat(path).length
  offsets = []
  with tf.io.gfile.GFile(path, 'rb') as f:
    offset = 0
    while offset < size:
      length = _record_length(f, path, len(offsets), offset, size, check_data=False)
      offsets.append(offset)
      offset += HEADER_BYTES + length + FOOTER_BYTES
  return offsets


def diagnose(path: str, index: int, offset: int) -> FileProblem:
  """What is wrong with the record at `offset` (a record boundary) of a file TF failed to read."""
  size = tf.io.gfile.stat(path).length
  with tf.io.gfile.GFile(path, 'rb') as f:
    try:
      _record_length(f, path, index, offset, size, check_data=True)
    except CorruptFileError as e:
      return e.problem
  return FileProblem(path, index, offset, f'cannot be read from record {index} (byte {offset})')


def read_records(path: str, max_records: Optional[int] = None) -> Iterator[Tuple[int, int, bytes]]:
  """(index, byte offset, data) of the file's records, read (and CRC-checked) by TensorFlow.

  Raises CorruptFileError at the first record that cannot be read, or after the last one
  if bytes that are no record follow (TensorFlow's reader ignores a partial header).
  """
  size = tf.io.gfile.stat(path).length
  dataset = tf.data.TFRecordDataset(path)
  if max_records:
    dataset = dataset.take(max_records)
  index, offset = 0, 0
  try:
    for record in dataset:
      data = record.numpy()
      yield index, offset, data
      index += 1
      offset += HEADER_BYTES + len(data) + FOOTER_BYTES
  except tf.errors.DataLossError:
    raise CorruptFileError(diagnose(path, index, offset)) from None
  if offset < size and not (max_records and index >= max_records):
    raise CorruptFileError(diagnose(path, index, offset))


def _pattern_files(file_patterns: Union[str, Sequence[str]]) -> List[str]:
  """Sorted files of the patterns (each may be comma-separated); none is not an error here."""
  if isinstance(file_patterns, str):
    file_patterns = [file_patterns]
  patterns = [p.strip() for fp in file_patterns for p in str(fp).split(',') if p.strip()]
  return sorted({f for p in patterns for f in tf.io.gfile.glob(p)})


def _offset_problems(files: Sequence[str], offset: Optional[int]) -> List[FileProblem]:
  """Framing problems of the files; with the error's offset, first the data CRC there."""
  problems, suspects = [], []

  def walk(path):
    try:
      return path, record_offsets(path), None
    except CorruptFileError as e:
      return path, [], e.problem

  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    for path, offsets, problem in pool.map(walk, files):
      if problem:
        problems.append(problem)
      elif offset is not None:
        # TF names a data CRC failure by the data's offset, the rest by the record's.
        at = (offset, offset - HEADER_BYTES)
        suspects += [(path, i, o) for i, o in enumerate(offsets) if o in at]
  found = [diagnose(path, index, record_offset) for path, index, record_offset in suspects]
  return [p for p in found if not p.what.startswith('cannot be read')] + problems


def find_problems(files: Sequence[str], error_message: str = '') -> List[FileProblem]:
  """The first problem of each unreadable file.

  Args:
    files: TFRecord files.
    error_message: a DataLossError's message. When it names a byte offset, only the
      records' headers and the data at that offset are checked (cheap); otherwise every
      record is read by TensorFlow (its CRCs).
  """
  match = _ERROR_OFFSET.search(error_message or '')
  problems = _offset_problems(files, int(match.group(1)) if match else None)
  if problems or match:
    return problems
  for path in files:
    try:
      for _ in read_records(path):
        pass
    except CorruptFileError as e:
      problems.append(e.problem)
  return problems


def fix_hint(split: str = 'train') -> str:
  """How to get past corrupt records (the setting named for `split`: 'train' or 'eval')."""
  setting = f'{split}/InputConfig.skip_corrupt_records = True'
  return (
    'Re-create the bad shard(s) (or remove them from the file pattern), or set '
    f'`{setting}` (--gin_param="{setting}") to skip records that cannot be read or '
    'decoded (they are counted and logged). `spinenet-check-data --file_pattern=...` '
    'checks every record.'
  )


def data_error_message(
  error: tf.errors.OpError, file_patterns: Sequence[str], split: str = 'train'
) -> Optional[str]:
  """A message naming the bad TFRecord file(s) behind `error`, or None if all files read fine.

  TensorFlow's DataLossError gives an offset but no file name; this scans the files' record
  headers (and, when the error names no offset, all their CRCs). The first line names the
  first bad file and what is wrong; the last says how to fix it, e.g.

    Corrupt input data: /data/train-00003-of-00256.tfrecord has a CRC mismatch in the data
    of record 3 (bytes 38141-83298: a bit flip or overwritten bytes)
    Re-create the bad shard(s) ... or set `train/InputConfig.skip_corrupt_records = True` ...

  Args:
    error: the error that stopped an input pipeline (usually a tf.errors.DataLossError).
    file_patterns: the input pipelines' file patterns (globs, comma-separated allowed).
    split: 'train' or 'eval', the InputConfig scope the fix names.
  """
  problems = find_problems(_pattern_files(file_patterns), getattr(error, 'message', str(error)))
  if not problems:
    return None
  lines = [f'Corrupt input data: {problems[0]}'] + [f'  and {p}' for p in problems[1:10]]
  if len(problems) > 10:
    lines.append(f'  and {len(problems) - 10} more file(s)')
  return '\n'.join(lines + [fix_hint(split)])


# ---- records skipped by the input pipelines (InputConfig.skip_corrupt_records) ----------------

_SKIPPED = {'unreadable': 0, 'undecodable': 0}
_SKIPPED_LOCK = threading.Lock()
_DIAGNOSED = {}  # (path, offset) -> what is wrong there


def skipped_records() -> int:
  """Corrupt records the input pipelines of this process have skipped so far.

  Counts only pipelines built with skip_corrupt_records. A file that cannot be read past
  some record counts once (the rest of it is skipped: TFRecord framing cannot be resynced);
  a record that reads but does not decode or parse counts once.
  """
  with _SKIPPED_LOCK:
    return sum(_SKIPPED.values())


def _count_skipped(kind: str, count: int) -> Tuple[int, int]:
  """Adds count to kind; (skipped of kind, skipped in all) so far."""
  with _SKIPPED_LOCK:
    _SKIPPED[kind] += count
    return _SKIPPED[kind], sum(_SKIPPED.values())


def _warn(often: bool, msg: str, *args) -> None:
  """A warning; a repeated one (each epoch meets a bad record again) at most once a minute."""
  if often:
    logging.warning(msg, *args)
  else:
    logging.log_every_n_seconds(logging.WARNING, msg, 60, *args)


def note_unreadable(path, records_read, offset, size) -> np.int64:
  """Called (tf.py_function) by the input pipeline when a file ends before its last byte."""
  path, records_read, offset = path.numpy().decode('utf-8'), int(records_read), int(offset)
  _, total = _count_skipped('unreadable', 1)
  with _SKIPPED_LOCK:
    problem = _DIAGNOSED.get((path, offset))
  first = problem is None
  if first:
    try:
      problem = str(diagnose(path, records_read, offset))
    except (OSError, tf.errors.OpError) as e:  # the file went away: still report the skip
      problem = f'{path} cannot be read ({e})'
    with _SKIPPED_LOCK:
      _DIAGNOSED[(path, offset)] = problem
  _warn(
    first,
    'Skipped the rest of %s after %d records (byte %d of %d): %s. %d corrupt record(s) '
    'skipped so far.',
    path,
    records_read,
    offset,
    int(size),
    problem,
    total,
  )
  return np.int64(1)


def note_undecodable(count, file_pattern) -> np.int64:
  """Called (tf.py_function) by the input pipeline when records failed to decode or parse."""
  undecodable, total = _count_skipped('undecodable', int(count))
  _warn(
    undecodable == int(count),
    'Skipped %d record(s) of %s that do not decode or parse; %d corrupt record(s) skipped so '
    'far. spinenet-check-data --file_pattern=... names them.',
    int(count),
    file_pattern.numpy().decode('utf-8'),
    total,
  )
  return np.int64(1)


# ---- spinenet-check-data ---------------------------------------------------------------------


def _values(feature: tf.train.Feature) -> list:
  kind = feature.WhichOneof('kind')
  return list(getattr(feature, kind).value) if kind else []


def _box_problems(feature) -> List[str]:
  """Problems of the normalised [ymin, xmin, ymax, xmax] boxes of one detection example."""
  if any(k not in feature for k in BOX_FEATURES):
    return []  # reported as missing
  coordinates = [_values(feature[k]) for k in BOX_FEATURES]
  labels = (
    _values(feature['image/object/class/label']) if 'image/object/class/label' in feature else None
  )
  lengths = {len(c) for c in coordinates} | ({len(labels)} if labels is not None else set())
  if len(lengths) > 1:
    return [f'box coordinate and class label lists differ in length {sorted(lengths)}']
  boxes = np.asarray(coordinates, np.float64).T.reshape([-1, 4])
  if not np.all(np.isfinite(boxes)):
    return ['NaN or infinite box coordinates']
  problems = []
  if boxes.size and (boxes.min() < 0.0 or boxes.max() > 1.0):
    problems.append(f'box coordinates outside [0, 1] ({boxes.min():g} to {boxes.max():g})')
  flipped = int(np.sum((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])))
  if flipped:
    problems.append(f'{flipped} box(es) with ymin > ymax or xmin > xmax')
  return problems


def _image_problems(feature) -> List[str]:
  """Whether image/encoded decodes as the input pipeline decodes it, at the stated size."""
  encoded = feature['image/encoded'].bytes_list.value
  if len(encoded) != 1:
    return [f'image/encoded holds {len(encoded)} byte strings, not one image']
  try:
    image = tf.io.decode_image(encoded[0], channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    reason = re.sub(r'\{\{[^}]*\}\}|\[Op:\w+\]', '', e.message).strip().splitlines()[0]
    return [f'image does not decode ({reason[:120]})']
  keys = ('image/height', 'image/width')
  stated = tuple((_values(feature[k]) or [None])[0] for k in keys if k in feature)
  if len(stated) == 2 and stated != tuple(image.shape[:2]):
    return [
      f'image is {image.shape[0]}x{image.shape[1]} but image/height x image/width say '
      f'{stated[0]}x{stated[1]}'
    ]
  return []


def example_problems(
  serialized: bytes,
  kind: str = 'detection',
  decode_images: bool = True,
  annotations: Optional[Dict[str, np.ndarray]] = None,
) -> List[str]:
  """Problems of one record as a tf.Example of `kind`.

  Args:
    serialized: the record's data.
    kind: 'detection' (data/tfexample.py's features) or 'classification'.
    decode_images: decode image/encoded as the input pipeline does (tf.io.decode_image).
    annotations: `annotation_boxes` of a COCO file the record's image must be in.
  """
  try:
    example = tf.train.Example.FromString(serialized)
  except proto_message.DecodeError:
    return ['not a tf.train.Example (does not parse)']
  feature = example.features.feature
  missing = [k for k in REQUIRED_FEATURES[kind] if k not in feature]
  problems = [f'missing feature(s) {", ".join(missing)}'] if missing else []
  if kind == 'detection':
    problems += _box_problems(feature)
  if decode_images and 'image/encoded' in feature:
    problems += _image_problems(feature)
  if annotations is not None:
    source_id = _values(feature['image/source_id'])[:1] if 'image/source_id' in feature else []
    source_id = source_id[0].decode('utf-8', 'replace') if source_id else None
    problems += _annotation_problems(feature, source_id, annotations)
  return problems


@dataclasses.dataclass
class FileReport:
  """What spinenet-check-data found in one file.

  Attributes:
    path: the file.
    records: records read (up to max_records, or to the first unreadable one).
    bad_examples: records read whose tf.Example has a problem.
    unreadable: the file's first unreadable place, or None.
    problems: 'record i (byte o): problem' lines.
  """

  path: str
  records: int = 0
  bad_examples: int = 0
  unreadable: Optional[FileProblem] = None
  problems: List[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.unreadable and not self.bad_examples


def annotation_boxes(annotation_file: str) -> Dict[str, np.ndarray]:
  """COCO image id (str) -> its annotations' boxes [N, 4] as [ymin, xmin, ymax, xmax] pixels."""
  data = file_utils.read_json(annotation_file, 'annotation file')
  if not isinstance(data, dict) or not isinstance(data.get('images'), list):
    raise ValueError(f'{annotation_file} is not a COCO annotation file (no "images" list).')
  boxes = {str(image.get('id')): [] for image in data['images'] if isinstance(image, dict)}
  for ann in data.get('annotations') or []:
    if str(ann.get('image_id')) in boxes and len(ann.get('bbox') or ()) == 4:
      x, y, w, h = (float(v) for v in ann['bbox'])
      boxes[str(ann['image_id'])].append([y, x, y + h, x + w])
  return {k: np.asarray(v, np.float64).reshape([-1, 4]) for k, v in boxes.items()}


def _annotation_problems(feature, source_id: Optional[str], annotations) -> List[str]:
  """Whether the record's image id is in the annotation file and its boxes among the file's.

  Ids alone do not tell splits apart (COCO-style splits may number their images alike),
  so each record box must also match an annotation box of that image to 2 pixels.
  """
  if source_id is None:
    return []
  if source_id not in annotations:
    return [f'image id {source_id} is not in {_ANNOTATION_NOTE}']
  size = [_values(feature[k])[:1] for k in ('image/height', 'image/width') if k in feature]
  if len(size) < 2 or not all(size) or any(k not in feature for k in BOX_FEATURES):
    return []
  (height,), (width,) = size
  scale = np.array([height, width, height, width], np.float64)
  boxes = np.asarray([_values(feature[k]) for k in BOX_FEATURES], np.float64).T * scale
  known = annotations[source_id]
  if not boxes.size:
    return []
  if not known.size:
    return [f'image id {source_id} has {len(boxes)} box(es) but none in {_ANNOTATION_NOTE}']
  distance = np.abs(boxes[:, None, :] - known[None, :, :]).max(axis=-1).min(axis=-1)
  unmatched = int(np.sum(distance > 2.0))
  if unmatched:
    return [
      f'{unmatched} of the {len(boxes)} box(es) of image id {source_id} are not in '
      f'{_ANNOTATION_NOTE} (the annotation file of another split?)'
    ]
  return []


def check_file(
  path: str,
  max_records: Optional[int] = None,
  kind: str = 'detection',
  annotations: Optional[Dict[str, np.ndarray]] = None,
  decode_images: bool = True,
) -> FileReport:
  """Reads one TFRecord file (up to max_records) and checks each record (`example_problems`)."""
  report = FileReport(path)
  try:
    for index, offset, data in read_records(path, max_records):
      report.records += 1
      problems = example_problems(data, kind, decode_images, annotations)
      if problems:
        report.bad_examples += 1
        report.problems.append(f'record {index} (byte {offset}): {"; ".join(problems)}')
  except CorruptFileError as e:
    report.unreadable = e.problem
  return report


def check_data(
  file_pattern: str,
  max_records: Optional[int] = None,
  annotation_file: Optional[str] = None,
  kind: str = 'detection',
  decode_images: bool = True,
) -> List[FileReport]:
  """`check_file` of each file of the pattern (ValueError if none matches).

  Args:
    file_pattern: TFRecord glob(s), comma-separated allowed.
    max_records: records read per file (None: all).
    annotation_file: a COCO annotation JSON whose images and boxes must cover the records'.
    kind: 'detection' or 'classification' (the required features).
    decode_images: decode every image (the slow part: ~1-5 ms an image).
  """
  if kind not in REQUIRED_FEATURES:
    raise ValueError(f'kind must be one of {sorted(REQUIRED_FEATURES)}, got {kind!r}.')
  files = _pattern_files(file_pattern)
  if not files:
    raise ValueError(f'No files match the input pattern {file_pattern!r}.')
  annotations = annotation_boxes(annotation_file) if annotation_file else None
  return [check_file(path, max_records, kind, annotations, decode_images) for path in files]


def format_report(reports: Sequence[FileReport], max_lines_per_file: int = 5) -> str:
  """A per-file table, the first problems of each bad file, and a summary line."""
  names = [r.path for r in reports]
  if len({os.path.basename(n) for n in names}) == len(names):
    names = [os.path.basename(n) for n in names]
  rows = []
  for name, r in zip(names, reports):
    status = 'ok' if r.ok else 'bad examples'
    if r.unreadable:
      status = f'unreadable from record {r.unreadable.record}'
    rows.append([name, status, r.records, r.bad_examples])
  header = ['file', 'status', 'records read', 'bad examples']
  lines = [tables.format_table(header, rows, left_columns=2)]
  for r in reports:
    details = ([f'  {r.unreadable}'] if r.unreadable else []) + [
      f'  {r.path} {p}' for p in r.problems[:max_lines_per_file]
    ]
    if len(r.problems) > max_lines_per_file:
      details.append(f'  ... and {len(r.problems) - max_lines_per_file} more bad example(s)')
    lines += details
  bad = [r for r in reports if not r.ok]
  records = sum(r.records for r in reports)
  if bad:
    lines.append(f'{len(bad)} of {len(reports)} file(s) have problems ({records} records read).')
    problems = [p for r in bad for p in r.problems]
    if any(r.unreadable for r in bad) or not all(_ANNOTATION_NOTE in p for p in problems):
      lines.append(fix_hint())
    if any(_ANNOTATION_NOTE in p for p in problems):
      lines.append('Use the annotation file of the split these records were made from.')
  else:
    lines.append(f'All {len(reports)} file(s) are fine ({records} records read).')
  return '\n'.join(lines)

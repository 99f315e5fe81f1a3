"""Converts an image folder tree (one folder per class) to classification TFRecords.

  <image_dir>/<class name>/**/<image file>

Each sub-folder of image_dir is one class; labels are the sorted folder names'
indices (0-based), and `labels.txt` beside the shards names them (line i names
label i; UTF-8). Every regular file under a class folder (in sub-folders too) is
an image; hidden files (names starting with '.', e.g. .DS_Store) are ignored. A
file that is not a decodable image stops the run with a ValueError naming it,
unless skip_unreadable is set: then it is logged, counted and left out. An empty
class folder (or one whose every file was left out) and an image_dir without class
folders are errors: either would shift the labels of the other classes.

The records (`make_classification_example`) hold `image/encoded` (JPEG and PNG
kept byte for byte; anything else PIL reads, and CMYK or 16-bit images,
re-encoded as RGB PNG, as `coco_tfrecord` does), `image/format`, `image/height`,
`image/width`, `image/class/label`, `image/class/text` and `image/filename`.
Files are shuffled (seeded) before they are dealt round-robin to the shards, so
every shard mixes all classes in random order (a shuffle buffer over class-sorted
records would see one class at a time). Shards and labels.txt appear only under
their final names once everything converted (`utils.files`).
"""

import concurrent.futures
import contextlib
import dataclasses
import os
import random
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from absl import logging
from PIL import Image
import tensorflow as tf

from official_spinenet.data import coco_tfrecord
from official_spinenet.data import tfexample
from official_spinenet.utils import files

LABELS_FILE = 'labels.txt'
# Threads decoding images: PIL releases the GIL while it decodes.
DEFAULT_NUM_WORKERS = min(8, os.cpu_count() or 1)
# (encoded bytes, 'jpeg' | 'png', height, width, re-encoded as PNG)
LoadedImage = Tuple[bytes, str, int, int, bool]


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
  """Result of `convert_image_folder_to_tfrecords`.

  Attributes:
    tfrecord_files: the shard paths written.
    tfrecord_pattern: a glob matching exactly those shards.
    labels_file: the class-names file written (line i names label i).
    class_names: the class names, in label order.
    images_per_class: images written per class, in label order.
    num_images: images (= records) written.
    num_skipped: unreadable files left out (skip_unreadable only).
    num_reencoded: images re-encoded as PNG.
  """

  tfrecord_files: List[str]
  tfrecord_pattern: str
  labels_file: str
  class_names: List[str]
  images_per_class: List[int]
  num_images: int
  num_skipped: int
  num_reencoded: int

  def line(self) -> str:
    """One-line summary for the command line."""
    return (
      f'Wrote {self.num_images} images of {len(self.class_names)} classes to '
      f'{self.tfrecord_pattern} (class names in {self.labels_file}; '
      f'{self.num_skipped} unreadable files skipped, {self.num_reencoded} re-encoded as PNG).'
    )


def labels_file_path(output_prefix: str) -> str:
  """Where the class names of the shards `<output_prefix>-*` go: labels.txt beside them."""
  return os.path.join(os.path.dirname(output_prefix), LABELS_FILE)


def read_class_names(path: str) -> List[str]:
  """The class names of a labels file (line i names label i); ValueError if missing."""
  if not tf.io.gfile.exists(path):
    raise ValueError(f'Class-names file {path!r} does not exist.')
  with tf.io.gfile.GFile(path, 'rb') as f:
    text = f.read().decode('utf-8')
  return text.splitlines()  # '\r\n' too: a file edited on Windows


def list_classes(image_dir: str) -> List[str]:
  """The sorted class folder names of image_dir; ValueError if it has none."""
  if not os.path.isdir(image_dir):
    raise ValueError(f'Image folder {image_dir} does not exist or is not a folder.')
  entries = sorted(e for e in os.listdir(image_dir) if not e.startswith('.'))
  classes = [e for e in entries if os.path.isdir(os.path.join(image_dir, e))]
  if not classes:
    raise ValueError(
      f'{image_dir} has no class folders; expected one sub-folder of images per class '
      f'(<image_dir>/<class name>/<image>).'
    )
  ignored = [e for e in entries if e not in classes]
  if ignored:
    logging.warning('Ignoring %d files at the top of %s: %s', len(ignored), image_dir, ignored[:5])
  return classes


def list_image_files(image_dir: str, class_names: Sequence[str]) -> List[Tuple[str, int]]:
  """(path relative to image_dir, label) of every non-hidden file, classes in order.

  Raises:
    ValueError: naming the folder of a class without files.
  """
  items = []
  for label, name in enumerate(class_names):
    folder = os.path.join(image_dir, name)
    found = []
    for root, dirs, names in os.walk(folder):
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      found += [os.path.join(root, n) for n in sorted(names) if not n.startswith('.')]
    if not found:
      raise ValueError(f'Class folder {folder} has no image files.')
    items += [(os.path.relpath(path, image_dir), label) for path in found]
  return items


def load_image(image_dir: str, relative_path: str, index: int) -> LoadedImage:
  """(encoded bytes, 'jpeg' | 'png', height, width, reencoded) of one image file.

  The file is fully decoded, so truncated files fail here and not mid-training.

  Raises:
    ValueError: naming the file if it cannot be read or is not a decodable image.
  """
  path = os.path.join(image_dir, relative_path)
  try:
    with Image.open(path) as image:  # reads the header only
      width, height = image.size
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises UnidentifiedImageError (an OSError), SyntaxError, ValueError...
    raise ValueError(f'{path} is not a readable image: {type(e).__name__}: {e}') from e
  info = {'id': index, 'file_name': relative_path, 'height': height, 'width': width}
  data, image_format, reencoded = coco_tfrecord.load_image_bytes(image_dir, info)
  return data, image_format, height, width, reencoded


def make_classification_example(
  *,
  encoded_image: bytes,
  image_format: str,
  height: int,
  width: int,
  label: int,
  class_name: Optional[str] = None,
  filename: Optional[str] = None,
) -> tf.train.Example:
  """A classification tf.Example in the layout tf-models-official's Decoder reads.

  Args:
    encoded_image: JPEG or PNG bytes.
    image_format: 'jpeg' or 'png'.
    height, width: image size in pixels.
    label: 0-based class index (`image/class/label`).
    class_name: optional `image/class/text`.
    filename: optional `image/filename`.
  """
  if label < 0:
    raise ValueError(f'Class labels are 0-based indices, got {label}.')
  feature = {
    'image/encoded': tfexample._bytes_list([encoded_image]),
    'image/format': tfexample._bytes_list([image_format.encode('ascii')]),
    'image/height': tfexample._int64_list([int(height)]),
    'image/width': tfexample._int64_list([int(width)]),
    'image/class/label': tfexample._int64_list([int(label)]),
  }
  for key, value in (('image/class/text', class_name), ('image/filename', filename)):
    if value is not None:
      feature[key] = tfexample._bytes_list([tfexample._to_bytes(value)])
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _check_labels_file(labels_file: str, class_names: Sequence[str]) -> None:
  """Refuses to overwrite a labels file that names other classes (another split's)."""
  if tf.io.gfile.exists(labels_file):
    existing = read_class_names(labels_file)
    if existing != list(class_names):
      raise ValueError(
        f'{labels_file} already names {len(existing)} classes that differ from the '
        f'{len(class_names)} class folders here; the splits in one folder must share '
        'their classes. Write to another folder or delete it.'
      )


def _load_images(
  image_dir: str, items: Sequence[Tuple[str, int]], num_workers: int
) -> Iterator[Union[LoadedImage, ValueError]]:
  """load_image of each item, in order (the ValueError instead where it fails).

  Threads overlap the reads and PIL's decoding (which releases the GIL); items go
  to the pool in chunks so that only a few hundred encoded images are in memory.
  """

  def load(indexed: Tuple[int, Tuple[str, int]]) -> Union[LoadedImage, ValueError]:
    index, (relative_path, _) = indexed
    try:
      return load_image(image_dir, relative_path, index)
    except ValueError as e:
      return e

  if num_workers <= 1:
    yield from map(load, enumerate(items))
    return
  chunk = 32 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    for start in range(0, len(items), chunk):
      yield from pool.map(load, enumerate(items[start : start + chunk], start))


def _write_examples(
  writer: tfexample.ShardedTFRecordWriter,
  loaded_images: Iterator[Union[LoadedImage, ValueError]],
  items: Sequence[Tuple[str, int]],
  class_names: Sequence[str],
  skip_unreadable: bool,
  progress: coco_tfrecord.TextProgress,
) -> Tuple[List[int], int, int]:
  """Writes one record per readable image: (images per class, skipped, re-encoded)."""
  counts = [0] * len(class_names)
  num_skipped = num_reencoded = 0
  for (relative_path, label), loaded in zip(items, loaded_images):
    progress.update()
    if isinstance(loaded, ValueError):
      if not skip_unreadable:
        raise loaded
      logging.warning('Skipped: %s', loaded)
      num_skipped += 1
      continue
    data, image_format, height, width, reencoded = loaded
    writer.write(
      make_classification_example(
        encoded_image=data,
        image_format=image_format,
        height=height,
        width=width,
        label=label,
        class_name=class_names[label],
        filename=relative_path,
      )
    )
    counts[label] += 1
    num_reencoded += int(reencoded)
  return counts, num_skipped, num_reencoded


def convert_image_folder_to_tfrecords(
  image_dir: str,
  output_prefix: str,
  num_shards: int = 8,
  skip_unreadable: bool = False,
  seed: int = 0,
  num_workers: int = DEFAULT_NUM_WORKERS,
  show_progress: bool = True,
) -> ConversionSummary:
  """Converts <image_dir>/<class>/<images> to sharded TFRecords and labels.txt.

  Args:
    image_dir: local folder with one sub-folder per class.
    output_prefix: shards are `<output_prefix>-0000K-of-0000N.tfrecord`, the
      class names `<dirname(output_prefix)>/labels.txt` (local or gs://).
    num_shards: number of shards, >= 1.
    skip_unreadable: leave out (log and count) files that are not decodable
      images instead of stopping.
    seed: seed of the order in which the images are written.
    num_workers: threads reading and decoding images (the output is the same
      for any number).
    show_progress: report progress on stderr.

  Returns:
    A ConversionSummary.

  Raises:
    ValueError: naming the file or folder: no class folders, an empty class
      folder, an unreadable image (without skip_unreadable), a labels.txt of
      other classes in the output folder, a class name with a line break.
  """
  class_names = list_classes(image_dir)
  bad = [n for n in class_names if '\n' in n or '\r' in n]
  if bad:
    raise ValueError(f'Class folder names may not contain line breaks: {bad!r}.')
  labels_file = labels_file_path(output_prefix)
  _check_labels_file(labels_file, class_names)
  items = list_image_files(image_dir, class_names)
  random.Random(seed).shuffle(items)
  progress = coco_tfrecord.TextProgress(len(items), f'Converting {image_dir}', show_progress)
  try:
    with tfexample.ShardedTFRecordWriter(output_prefix, num_shards) as writer:
      # closing: a failure stops the decoding threads at once, not at garbage collection.
      with contextlib.closing(_load_images(image_dir, items, num_workers)) as loaded_images:
        counts, num_skipped, num_reencoded = _write_examples(
          writer, loaded_images, items, class_names, skip_unreadable, progress
        )
      _check_no_empty_class(image_dir, class_names, counts)
  finally:
    progress.close()
  files.atomic_write(labels_file, ''.join(f'{name}\n' for name in class_names))
  summary = ConversionSummary(
    tfrecord_files=writer.paths,
    tfrecord_pattern=tfexample.shard_pattern(output_prefix, num_shards),
    labels_file=labels_file,
    class_names=class_names,
    images_per_class=counts,
    num_images=sum(counts),
    num_skipped=num_skipped,
    num_reencoded=num_reencoded,
  )
  logging.info('%s', summary.line())
  return summary


def _check_no_empty_class(image_dir: str, class_names: Sequence[str], counts: Sequence[int]):
  """ValueError (inside the writer: no shard is kept) if skipping emptied a class."""
  empty = [name for name, count in zip(class_names, counts) if not count]
  if empty:
    raise ValueError(
      f'Every file of class folder(s) {[os.path.join(image_dir, n) for n in empty]} '
      'was unreadable and skipped; a class needs at least one image.'
    )

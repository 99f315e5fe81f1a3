"""A synthetic, deterministic shapes *classification* dataset (the classification demo).

Each image shows one main shape, the object to classify, among clutter:
smaller distractor shapes behind it (any kind, any colour) and up to two bars in
front of it that hide part of it (it always keeps `_MIN_MAIN_VISIBLE` of its
area), on a textured background (`shapes.render_background`: noise, gradient
or stripes). The label is the main shape's kind and colour:

  4 kinds (circle, square, triangle, cross: `shapes.shape_mask`) x
  3 colours (red, green, blue, each with hue / saturation / brightness jitter)
  = 12 classes, `CLASS_NAMES[label]` = '<colour>_<kind>'.

Scale (40-70% of the image side), position, rotation, background, clutter and
occlusion all vary, so a small model does not reach 100%: the main shape is only
"the largest one" (distractors of every kind and class colour lie beside it), a
bar may hide a corner or cut a circle's outline, and its hue is jittered towards
its neighbours. The main shape lies inside the central 87.5% of the image, the
eval centre crop of the classification input pipeline.

Labels are balanced: every block of 12 consecutive images holds each class once
(in a seeded order), so a split's class counts differ by at most one. Image `i`
of a split depends only on `(seed, split, i)`: growing a split keeps its first
images unchanged.

`ensure_shapes_classification_dataset` writes, under its data dir,
`tfrecords/{train,validation}-0000K-of-0000N.tfrecord` (PNG 'image/encoded', 0-based
'image/class/label' and the rest of `image_folder_tfrecord.make_classification_example`) and
`labels.txt` (line i names label i), then a marker (`dataset.json`) recording
the settings, so a finished copy is reused. Every file is written atomically.
"""

import colorsys
import io
import os
from typing import Any, Dict, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from official_spinenet.data import coco_tfrecord
from official_spinenet.data import image_folder_tfrecord
from official_spinenet.data import shapes
from official_spinenet.data import tfexample
from official_spinenet.utils import files

# Shape kinds in `shapes.shape_mask` category-id order (ids 1..4).
KINDS = tuple(c['name'] for c in shapes.CATEGORIES)
# Colour name -> hue in [0, 1).
COLOURS = (('red', 0.0), ('green', 1.0 / 3.0), ('blue', 2.0 / 3.0))
# Label = colour index * len(KINDS) + kind index.
CLASS_NAMES = tuple(f'{colour}_{kind}' for colour, _ in COLOURS for kind in KINDS)
NUM_CLASSES = len(CLASS_NAMES)

SPLITS = ('train', 'validation')
_SPLIT_CODES = {'train': 0, 'validation': 1}
# Keeps these random streams apart from the detection shapes' (`shapes._image_rng`).
_STREAM = 15
# Bumped whenever the drawing changes, so the marker no longer matches old copies.
GENERATOR_VERSION = 2
DATASET_MARKER = shapes.DATASET_MARKER
LABELS_FILE = 'labels.txt'

# Main shape: circumscribed diameter as a fraction of the image side.
_MAIN_SIZE = (0.4, 0.7)
# The eval pipeline keeps the central 87.5%; the main shape stays inside it.
_CENTRE_CROP_FRACTION = 0.875
# Distractors: how many, and their size as a fraction of the main shape's.
_MAX_DISTRACTORS = 3
_DISTRACTOR_SCALE = (0.2, 0.5)
_CLASS_COLOURED_DISTRACTORS = 0.7
# Occluding bars: how many, length and thickness as fractions of the image side.
_MAX_BARS = 2
_BAR_LENGTH = (0.4, 0.9)
_BAR_THICKNESS = (0.05, 0.12)
# A bar is re-drawn when it would leave less than this of the main shape visible.
_MIN_MAIN_VISIBLE = 0.7
_PLACEMENT_TRIES = 10
# Colour jitter of a class colour: hue +- (fraction of the circle), saturation, value.
_HUE_JITTER = 0.06
_SATURATION = (0.55, 1.0)
_VALUE = (0.5, 1.0)
# Mean absolute RGB difference the main shape keeps from the background.
_MIN_CONTRAST = 50.0
_NOISE_STDDEV = 6.0


def class_colour(rng: np.random.Generator, colour_index: int) -> np.ndarray:
  """A jittered RGB colour (float32 [3] in [0, 255]) of colour class `colour_index`."""
  hue = (COLOURS[colour_index][1] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
  rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*_SATURATION), rng.uniform(*_VALUE))
  return np.array(rgb, np.float32) * 255.0


def _bar_mask(
  cx: float, cy: float, half_length: float, half_thickness: float, angle: float, size: int
) -> np.ndarray:
  """`[size, size]` bool mask of a rotated bar centred at (cx, cy) (pixel centres)."""
  ys = np.arange(size, dtype=np.float32)[:, None] + 0.5 - cy
  xs = np.arange(size, dtype=np.float32)[None, :] + 0.5 - cx
  along = np.cos(angle) * xs + np.sin(angle) * ys
  across = -np.sin(angle) * xs + np.cos(angle) * ys
  return (np.abs(along) <= half_length) & (np.abs(across) <= half_thickness)


def _background_and_colour(
  rng: np.random.Generator, colour_index: int, size: int
) -> Tuple[np.ndarray, np.ndarray]:
  """A background and a main-shape colour that stands out from its mean."""
  for _ in range(_PLACEMENT_TRIES):
    image = shapes.render_background(rng, size, size)
    mean = image.reshape(-1, 3).mean(axis=0)
    for _ in range(_PLACEMENT_TRIES):
      colour = class_colour(rng, colour_index)
      if np.abs(colour - mean).mean() >= _MIN_CONTRAST:
        return image, colour
  # Practically unreachable; a flat grey background contrasts with every class colour.
  return np.full((size, size, 3), 128.0, np.float32), class_colour(rng, colour_index)


def _draw_distractors(rng: np.random.Generator, image: np.ndarray, main_size: float) -> None:
  """Paints up to _MAX_DISTRACTORS smaller shapes of any kind and colour (in place)."""
  size = image.shape[0]
  for _ in range(int(rng.integers(0, _MAX_DISTRACTORS + 1))):
    diameter = main_size * rng.uniform(*_DISTRACTOR_SCALE)
    kind = int(rng.integers(1, len(KINDS) + 1))
    cx, cy = rng.uniform(diameter / 2, size - diameter / 2, size=2)
    mask = shapes.shape_mask(kind, cx, cy, diameter, rng.uniform(0, 2 * np.pi), size, size)
    # Mostly class colours, so neither the colours present nor the kinds present
    # give the label away: only the largest shape's do.
    if rng.uniform() < _CLASS_COLOURED_DISTRACTORS:
      image[mask] = class_colour(rng, int(rng.integers(len(COLOURS))))
    else:
      image[mask] = rng.uniform(0, 255, size=3)


def _draw_bars(rng: np.random.Generator, image: np.ndarray, main: np.ndarray, radius: float):
  """Paints up to _MAX_BARS bars across the main shape (in place), each leaving at
  least _MIN_MAIN_VISIBLE of it visible; `main` is its `[S, S]` mask."""
  size = image.shape[0]
  ys, xs = np.nonzero(main)
  cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
  visible = main.copy()
  full_area = np.count_nonzero(main)
  for _ in range(int(rng.integers(0, _MAX_BARS + 1))):
    for _ in range(_PLACEMENT_TRIES):
      offset = rng.uniform(-radius, radius, size=2)
      bar = _bar_mask(
        cx + offset[0],
        cy + offset[1],
        size * rng.uniform(*_BAR_LENGTH) / 2,
        size * rng.uniform(*_BAR_THICKNESS) / 2,
        rng.uniform(0, np.pi),
        size,
      )
      if np.count_nonzero(visible & ~bar) >= _MIN_MAIN_VISIBLE * full_area:
        break
    else:
      continue  # Every try hid too much: no bar this time.
    visible &= ~bar
    image[bar] = rng.uniform(0, 255, size=3)


def render_classification_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
  """Draws one image of class `label`.

  Args:
    rng: the random generator; the image is a function of its state.
    label: class index in [0, NUM_CLASSES).
    size: image side in pixels (square), >= 16.

  Returns:
    `[size, size, 3]` uint8 image.

  Raises:
    ValueError: a label out of range or a size below 16.
  """
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f'label must be in [0, {NUM_CLASSES}), got {label}.')
  if size < 16:
    raise ValueError(f'size must be at least 16 pixels, got {size}.')
  colour_index, kind_index = divmod(int(label), len(KINDS))
  image, colour = _background_and_colour(rng, colour_index, size)
  diameter = size * rng.uniform(*_MAIN_SIZE)
  _draw_distractors(rng, image, diameter)
  # Keep the circumscribed circle inside the eval centre crop.
  margin = size * (1 - _CENTRE_CROP_FRACTION) / 2 + diameter / 2
  cx, cy = rng.uniform(margin, size - margin, size=2)
  main = shapes.shape_mask(kind_index + 1, cx, cy, diameter, rng.uniform(0, 2 * np.pi), size, size)
  image[main] = colour
  _draw_bars(rng, image, main, diameter / 2)
  image += rng.normal(0, _NOISE_STDDEV, size=image.shape).astype(np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_label(seed: int, split: str, index: int) -> int:
  """The label of image `index` of `split`: each block of NUM_CLASSES images holds
  every class once, in an order drawn from (seed, split, block)."""
  block, position = divmod(int(index), NUM_CLASSES)
  order = np.random.default_rng([int(seed), _STREAM, _SPLIT_CODES[split], block, 0])
  return int(order.permutation(NUM_CLASSES)[position])


def render_split_image(seed: int, split: str, index: int, size: int) -> Tuple[np.ndarray, int]:
  """(`[size, size, 3]` uint8 image, label) of image `index` of `split`."""
  label = image_label(seed, split, index)
  rng = np.random.default_rng([int(seed), _STREAM, _SPLIT_CODES[split], int(index), 1])
  return render_classification_image(rng, label, size), label


def _example(image: np.ndarray, label: int) -> tf.train.Example:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return image_folder_tfrecord.make_classification_example(
    encoded_image=buffer.getvalue(),
    image_format='png',
    height=image.shape[0],
    width=image.shape[1],
    label=label,
    class_name=CLASS_NAMES[label],
  )


def write_split(
  data_dir: str, split: str, num_images: int, size: int, seed: int, num_shards: int = 2
) -> Dict[str, Any]:
  """Writes one split's sharded TFRecords.

  Returns:
    {'file_pattern', 'files', 'num_images', 'class_counts' (list, by label)}.
  """
  if split not in _SPLIT_CODES:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  counts = [0] * NUM_CLASSES
  prefix = os.path.join(data_dir, 'tfrecords', split)
  progress = coco_tfrecord.TextProgress(num_images, f'Drawing {split} shapes')
  with tfexample.ShardedTFRecordWriter(prefix, num_shards) as writer:
    for index in range(num_images):
      image, label = render_split_image(seed, split, index, size)
      writer.write(_example(image, label))
      counts[label] += 1
      progress.update()
  progress.close()
  return {
    'file_pattern': tfexample.shard_pattern(prefix, num_shards),
    'files': writer.paths,
    'num_images': num_images,
    'class_counts': counts,
  }


def ensure_shapes_classification_dataset(
  data_dir: str, num_train: int = 2000, num_val: int = 500, image_size: int = 128, seed: int = 0
) -> Dict[str, Any]:
  """The shapes classification dataset in `data_dir`, written unless a finished copy is there.

  A finished copy is one whose marker (`<data_dir>/dataset.json`, written
  atomically after everything else) records the same counts, image size, seed
  and generator version; anything else (no marker, an interrupted run, other
  settings) is written afresh.

  Args:
    data_dir: the dataset's root folder.
    num_train: training images, >= 1.
    num_val: held-out images, >= 1.
    image_size: side of the square images in pixels, >= 16.
    seed: random seed.

  Returns:
    {'train': {'file_pattern', 'files', 'num_images', 'class_counts'},
     'validation': {...}, 'class_names_file': <data_dir>/labels.txt,
     'num_classes': NUM_CLASSES}.

  Raises:
    ValueError: counts below 1 or an image size below 16.
  """
  if num_train < 1 or num_val < 1:
    raise ValueError(f'Need num_train >= 1 and num_val >= 1, got {num_train}, {num_val}.')
  if image_size < 16:
    raise ValueError(f'image_size must be at least 16 pixels, got {image_size}.')
  settings = {
    'num_train': int(num_train),
    'num_val': int(num_val),
    'image_size': int(image_size),
    'seed': int(seed),
    'generator_version': GENERATOR_VERSION,
  }
  recorded = shapes.finished_copy(data_dir, settings, 'Shapes classification dataset')
  if recorded:
    return recorded['dataset']
  dataset: Dict[str, Any] = {}
  for split, count in zip(SPLITS, (num_train, num_val)):
    dataset[split] = write_split(data_dir, split, count, image_size, seed)
  dataset['class_names_file'] = os.path.join(data_dir, LABELS_FILE)
  files.atomic_write(dataset['class_names_file'], ''.join(f'{n}\n' for n in CLASS_NAMES))
  dataset['num_classes'] = NUM_CLASSES
  marker = os.path.join(data_dir, shapes.DATASET_MARKER)
  files.write_json_atomically({'settings': settings, 'dataset': dataset}, marker, indent=2)
  logging.info('Wrote the shapes classification dataset to %s.', data_dir)
  return dataset

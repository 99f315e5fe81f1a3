"""A synthetic, deterministic "shapes" detection dataset.

Each image shows 1 to 4 solid shapes (circle, square, triangle, cross) of
random size, rotation, colour and position on a textured background (noise,
gradient or stripes). Shapes are painted in order, so later ones occlude
earlier ones; every annotation is the *visible* part of its shape: the mask
after occlusion, the box the tight box of that mask. A placement that would
leave an earlier shape mostly hidden is re-drawn, so no visible fragment is
ever left unannotated.

Rasterisation is plain numpy on pixel centres, so masks are exact and the
output depends only on the seed (and numpy's generator), not on a drawing
library's anti-aliasing. Image `i` of a split depends only on
`(seed, split, i)`: growing `num_train` keeps the first images unchanged.

`make_shapes_dataset` writes for each split a COCO instances JSON, a folder
of PNG images and sharded TFRecords; the TFRecords are made from the JSON and
images by `coco_tfrecord.convert_coco_to_tfrecords`, the path real COCO takes.
`ensure_shapes_dataset` does the same unless a finished copy is already there.
Every file is written atomically (`utils.files`).
"""

import io
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import tensorflow as tf

from official_spinenet.data import coco_tfrecord
from official_spinenet.utils import files
from official_spinenet.utils import image_sizes

CATEGORIES = (
  {'id': 1, 'name': 'circle', 'supercategory': 'shape'},
  {'id': 2, 'name': 'square', 'supercategory': 'shape'},
  {'id': 3, 'name': 'triangle', 'supercategory': 'shape'},
  {'id': 4, 'name': 'cross', 'supercategory': 'shape'},
)
NUM_CATEGORIES = len(CATEGORIES)
# Detection heads in the Model Garden count the background class too.
NUM_CLASSES_WITH_BACKGROUND = NUM_CATEGORIES + 1

SPLITS = ('train', 'val')
_SPLIT_CODES = {'train': 0, 'val': 1}

# A placement is re-drawn when it would leave an earlier shape with less than
# this fraction of its area, or fewer than _MIN_VISIBLE_PIXELS pixels, visible.
_MIN_VISIBLE_FRACTION = 0.5
_MIN_VISIBLE_PIXELS = 20
_PLACEMENT_TRIES = 10
# Mean absolute RGB difference a shape colour keeps from the background.
_MIN_COLOUR_CONTRAST = 60.0


def _pixel_centres(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
  """Returns `[H, 1]` y and `[1, W]` x coordinates of the pixel centres."""
  ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
  xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
  return ys, xs


def _convex_polygon_mask(vertices: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Rasterises a convex polygon.

  Args:
    vertices: `[K, 2]` (x, y) vertices in either winding order.
    ys: `[H, 1]` pixel-centre y coordinates.
    xs: `[1, W]` pixel-centre x coordinates.

  Returns:
    `[H, W]` bool mask of the pixel centres inside or on the polygon.
  """
  x, y = vertices[:, 0], vertices[:, 1]
  # Sign of the shoelace area: makes the edge test independent of winding.
  twice_area = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
  orientation = 1.0 if twice_area >= 0 else -1.0
  inside = np.ones((ys.shape[0], xs.shape[1]), dtype=bool)
  for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
    # Inside means on the same side of every edge as the polygon's interior.
    inside &= orientation * ((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)) >= 0
  return inside


def _regular_polygon(
  num_vertices: int, cx: float, cy: float, radius: float, angle: float
) -> np.ndarray:
  """Returns the `[K, 2]` (x, y) vertices of a regular polygon."""
  t = angle + 2.0 * np.pi * np.arange(num_vertices) / num_vertices
  return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _rectangle(cx: float, cy: float, half_w: float, half_h: float, angle: float) -> np.ndarray:
  """Returns the `[4, 2]` (x, y) vertices of a rotated rectangle."""
  corners = np.array([[half_w, half_h], [half_w, -half_h], [-half_w, -half_h], [-half_w, half_h]])
  c, s = np.cos(angle), np.sin(angle)
  rotated = corners @ np.array([[c, s], [-s, c]])
  return rotated + np.array([cx, cy])


def shape_mask(
  category_id: int, cx: float, cy: float, size: float, angle: float, height: int, width: int
) -> np.ndarray:
  """Rasterises one shape.

  Args:
    category_id: 1 circle, 2 square, 3 triangle, 4 cross (see CATEGORIES).
    cx: centre x in pixels.
    cy: centre y in pixels.
    size: diameter of the shape's circumscribed circle, in pixels.
    angle: rotation in radians (ignored for circles).
    height: image height.
    width: image width.

  Returns:
    `[height, width]` bool mask; a pixel is inside when its centre is.

  Raises:
    ValueError: for an unknown category id.
  """
  ys, xs = _pixel_centres(height, width)
  radius = size / 2.0
  if category_id == 1:
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
  if category_id == 2:
    return _convex_polygon_mask(_regular_polygon(4, cx, cy, radius, angle + np.pi / 4), ys, xs)
  if category_id == 3:
    return _convex_polygon_mask(_regular_polygon(3, cx, cy, radius, angle), ys, xs)
  if category_id == 4:
    # Two bars whose corners touch the circumscribed circle.
    half_len, half_thick = radius * 0.95, radius * 0.31
    bar_a = _convex_polygon_mask(_rectangle(cx, cy, half_len, half_thick, angle), ys, xs)
    bar_b = _convex_polygon_mask(_rectangle(cx, cy, half_thick, half_len, angle), ys, xs)
    return bar_a | bar_b
  raise ValueError(f'Unknown shape category id {category_id}.')


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Returns a `[H, W, 3]` float32 background in [0, 255]: noise, gradient or stripes."""
  kind = rng.integers(3)
  colour_a = rng.uniform(0, 255, size=3).astype(np.float32)
  colour_b = rng.uniform(0, 255, size=3).astype(np.float32)
  ys, xs = _pixel_centres(height, width)
  theta = rng.uniform(0, np.pi)
  # Coordinate along a random direction, used by gradients and stripes.
  along = np.cos(theta) * xs + np.sin(theta) * ys
  if kind == 0:  # noise
    image = colour_a + rng.normal(0, 25, size=(height, width, 3))
  elif kind == 1:  # linear gradient
    t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    image = colour_a + t[..., None] * (colour_b - colour_a)
  else:  # soft stripes
    period = rng.uniform(6, 24)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * along / period)
    image = colour_a + t[..., None] * (colour_b - colour_a)
  return image.astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
  """Draws an RGB colour that stands out from the background's mean."""
  for _ in range(20):
    colour = rng.uniform(0, 255, size=3).astype(np.float32)
    if np.abs(colour - background_mean).mean() >= _MIN_COLOUR_CONTRAST:
      return colour
  # Fall back to the far end of each channel: at least 127.5 away on average.
  return np.where(background_mean > 127.5, 0.0, 255.0).astype(np.float32)


def _placement_keeps_others_visible(
  new_mask: np.ndarray, visible: Sequence[np.ndarray], full_areas: Sequence[int]
) -> bool:
  """True if every earlier shape keeps enough of itself visible.

  Enough means at least `_MIN_VISIBLE_FRACTION` of its full area and at least
  `_MIN_VISIBLE_PIXELS` pixels (or all of them, for shapes smaller than
  that), so an untouched shape always passes.
  """
  for mask, full_area in zip(visible, full_areas):
    remaining = np.count_nonzero(mask & ~new_mask)
    needed = max(_MIN_VISIBLE_FRACTION * full_area, min(_MIN_VISIBLE_PIXELS, full_area))
    if remaining < needed:
      return False
  return True


def render_shapes_image(
  rng: np.random.Generator,
  height: int = 128,
  width: int = 128,
  size_range: Optional[Tuple[float, float]] = None,
  max_objects: int = 4,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Draws one image with its instance annotations.

  Args:
    rng: the random generator; the output is a function of its state.
    height: image height in pixels.
    width: image width in pixels.
    size_range: `(min, max)` shape size (circumscribed diameter) in pixels;
      defaults to (12, 60) scaled by min(height, width) / 128.
    max_objects: up to this many shapes (at least 1).

  Returns:
    `(image, masks, classes)`: `[H, W, 3]` uint8 image, `[N, H, W]` bool
    visible masks (N >= 1, each non-empty), `[N]` int32 category ids. Masks
    are in painting order: later shapes lie on top.

  Raises:
    ValueError: if the size range does not fit the image or max_objects < 1.
  """
  if max_objects < 1:
    raise ValueError(f'max_objects must be >= 1, got {max_objects}.')
  min_size, max_size = size_range or _default_size_range(height, width)
  if not 4 <= min_size <= max_size <= min(height, width):
    raise ValueError(
      f'size_range ({min_size}, {max_size}) must satisfy 4 <= min <= max <= '
      f'min(height, width) = {min(height, width)}.'
    )
  image = render_background(rng, height, width)
  background_mean = image.reshape(-1, 3).mean(axis=0)
  visible, full_areas, classes = [], [], []
  for _ in range(int(rng.integers(1, max_objects + 1))):
    category_id = int(rng.integers(1, NUM_CATEGORIES + 1))
    colour = _contrasting_colour(rng, background_mean)
    for _ in range(_PLACEMENT_TRIES):
      size = rng.uniform(min_size, max_size)
      # Keep the circumscribed circle inside the image.
      cx = rng.uniform(size / 2, width - size / 2)
      cy = rng.uniform(size / 2, height - size / 2)
      angle = rng.uniform(0, 2 * np.pi)
      mask = shape_mask(category_id, cx, cy, size, angle, height, width)
      if mask.any() and _placement_keeps_others_visible(mask, visible, full_areas):
        break
    else:
      continue  # No placement left the others visible: leave this shape out.
    visible = [m & ~mask for m in visible]
    visible.append(mask)
    full_areas.append(int(np.count_nonzero(mask)))
    classes.append(category_id)
    image[mask] = colour
  # Light sensor-like noise over everything, so shapes are not flat colour.
  image += rng.normal(0, 6, size=image.shape).astype(np.float32)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  masks = np.stack(visible) if visible else np.zeros((0, height, width), bool)
  return image, masks, np.array(classes, dtype=np.int32)


def _default_size_range(height: int, width: int) -> Tuple[float, float]:
  scale = min(height, width) / 128.0
  return max(4.0, 12.0 * scale), max(4.0, 60.0 * scale)


def mask_to_coco_box(mask: np.ndarray) -> List[float]:
  """Returns the tight COCO box `[x, y, w, h]` (pixels) of a non-empty mask."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  y0, y1 = int(rows[0]), int(rows[-1]) + 1
  x0, x1 = int(cols[0]), int(cols[-1]) + 1
  return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
  """Encodes a mask as JSON-ready compressed COCO RLE (exact, unlike polygons).

  Occluded shapes can have holes or several parts, which polygons would only
  approximate; pycocotools reads RLE for crowd and non-crowd objects alike.
  """
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
  # One stream per image: image i does not depend on how many came before.
  return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def _write_png(image: np.ndarray, path: str) -> None:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  files.atomic_write(path, buffer.getvalue())


def write_shapes_split(
  output_dir: str,
  split: str,
  num_images: int,
  height: int = 128,
  width: int = 128,
  seed: int = 0,
  size_range: Optional[Tuple[float, float]] = None,
  show_progress: bool = True,
) -> Dict[str, Any]:
  """Writes the PNG images and the COCO instances JSON of one split.

  Files: `<output_dir>/<split>/<image_id:06d>.png` and
  `<output_dir>/annotations/instances_<split>.json`. Image ids start at 1,
  annotation ids at 1 within the split.

  Args:
    output_dir: root folder of the dataset.
    split: 'train' or 'val'.
    num_images: number of images, >= 1.
    height: image height in pixels.
    width: image width in pixels.
    seed: random seed.
    size_range: see `render_shapes_image`.
    show_progress: report progress on stderr.

  Returns:
    `{'image_dir': str, 'annotation_file': str, 'num_images': int,
    'num_objects': int}`.

  Raises:
    ValueError: for an unknown split or `num_images` < 1.
  """
  if split not in _SPLIT_CODES:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  if num_images < 1:
    raise ValueError(f'num_images must be >= 1, got {num_images}.')
  image_dir = os.path.join(output_dir, split)
  images, annotations = [], []
  progress = coco_tfrecord.TextProgress(
    num_images, f'Drawing {split} shapes', enabled=show_progress
  )
  for index in range(num_images):
    image_id = index + 1
    image, masks, classes = render_shapes_image(
      _image_rng(seed, split, index), height, width, size_range
    )
    file_name = f'{image_id:06d}.png'
    _write_png(image, os.path.join(image_dir, file_name))
    images.append({'id': image_id, 'file_name': file_name, 'height': height, 'width': width})
    for mask, category_id in zip(masks, classes):
      annotations.append(
        {
          'id': len(annotations) + 1,
          'image_id': image_id,
          'category_id': int(category_id),
          'bbox': mask_to_coco_box(mask),
          'area': float(np.count_nonzero(mask)),
          'iscrowd': 0,
          'segmentation': mask_to_rle(mask),
        }
      )
    progress.update()
  progress.close()
  annotation_file = os.path.join(output_dir, 'annotations', f'instances_{split}.json')
  files.write_json_atomically(
    {
      'info': {
        'description': 'official_spinenet synthetic shapes',
        'version': '1.0',
        'seed': int(seed),
      },
      'licenses': [],
      'images': images,
      'annotations': annotations,
      'categories': [dict(c) for c in CATEGORIES],
    },
    annotation_file,
    indent=None,
  )
  return {
    'image_dir': image_dir,
    'annotation_file': annotation_file,
    'num_images': num_images,
    'num_objects': len(annotations),
  }


def make_shapes_dataset(
  output_dir: str,
  num_train: int = 1000,
  num_val: int = 200,
  image_size: image_sizes.ImageSize = 128,
  seed: int = 0,
  num_shards: int = 2,
  include_masks: bool = True,
  size_range: Optional[Tuple[float, float]] = None,
  show_progress: bool = True,
) -> Dict[str, Dict[str, Any]]:
  """Writes the synthetic shapes dataset: COCO JSON, PNGs and TFRecords.

  Layout under `output_dir`:
    annotations/instances_{train,val}.json   COCO instances (RLE masks)
    {train,val}/000001.png ...               images
    tfrecords/{train,val}-0000i-of-0000n.tfrecord

  The same seed gives byte-identical JSON and PNG files.

  Args:
    output_dir: root folder; created if missing. Existing files are
      overwritten.
    num_train: training images, >= 1.
    num_val: validation images; 0 skips the split.
    image_size: an int for square images or `(height, width)`.
    seed: random seed.
    num_shards: TFRecord shards per split.
    include_masks: write instance masks into the TFRecords (the JSON always
      has them).
    size_range: `(min, max)` shape size in pixels; defaults to (12, 60)
      scaled by min(height, width) / 128.
    show_progress: report progress on stderr.

  Returns:
    `{split: {'image_dir', 'annotation_file', 'tfrecord_pattern',
    'tfrecord_files', 'num_images', 'num_objects'}}` for each written split.

  Raises:
    ValueError: for a non-positive `num_train`, negative `num_val`, image
      sizes below 16 pixels, or a size range that does not fit.
  """
  height, width = image_sizes.parse_image_size(image_size)
  if min(height, width) < 16:
    raise ValueError(f'image_size must be at least 16 pixels, got {image_size}.')
  if num_train < 1 or num_val < 0:
    raise ValueError(f'Need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}.')
  result = {}
  for split, num_images in (('train', num_train), ('val', num_val)):
    if num_images == 0:
      continue
    paths = write_shapes_split(
      output_dir, split, num_images, height, width, seed, size_range, show_progress
    )
    summary = coco_tfrecord.convert_coco_to_tfrecords(
      image_dir=paths['image_dir'],
      annotation_file=paths['annotation_file'],
      output_prefix=os.path.join(output_dir, 'tfrecords', split),
      num_shards=num_shards,
      include_masks=include_masks,
      show_progress=show_progress,
    )
    paths['tfrecord_pattern'] = summary.tfrecord_pattern
    paths['tfrecord_files'] = summary.tfrecord_files
    result[split] = paths
    logging.info(
      'Shapes %s: %d images, %d objects, %s',
      split,
      num_images,
      paths['num_objects'],
      summary.tfrecord_pattern,
    )
  return result


# Written last by `ensure_shapes_dataset`: its presence means the data are complete.
DATASET_MARKER = 'dataset.json'


def ensure_shapes_dataset(
  data_dir: str,
  num_train: int,
  num_val: int,
  image_size: image_sizes.ImageSize = 128,
  seed: int = 0,
) -> Dict[str, Dict[str, Any]]:
  """The shapes dataset in `data_dir`, generated unless a finished copy is there.

  A finished copy is one whose marker (`<data_dir>/dataset.json`, written
  atomically after everything else) records the same image counts, image size and
  seed; anything else (no marker, an interrupted run, other settings) is written
  afresh. The demos call this, so running one again skips the data step.

  Args:
    data_dir: the dataset's root folder.
    num_train: training images, >= 1.
    num_val: validation images, >= 0.
    image_size: an int for square images or `(height, width)`.
    seed: random seed.

  Returns:
    What `make_shapes_dataset` returns: `{split: {'image_dir', 'annotation_file',
    'tfrecord_pattern', 'tfrecord_files', 'num_images', 'num_objects'}}`.
  """
  settings = {
    'num_train': num_train,
    'num_val': num_val,
    'image_size': list(image_sizes.parse_image_size(image_size)),
    'seed': seed,
  }
  recorded = finished_copy(data_dir, settings, 'Shapes dataset')
  if recorded:
    return recorded['splits']
  paths = make_shapes_dataset(
    data_dir, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed
  )
  marker = os.path.join(data_dir, DATASET_MARKER)
  files.write_json_atomically({'settings': settings, 'splits': paths}, marker, indent=2)
  return paths


def finished_copy(data_dir: str, settings: Dict[str, Any], what: str) -> Optional[Dict[str, Any]]:
  """The marker `<data_dir>/dataset.json` if it records `settings`, else None.

  A generated dataset writes its marker last, as {'settings': ..., <contents>}; a
  marker with the same settings means a finished copy to reuse (`what` names the
  dataset in the log and in errors).
  """
  marker = os.path.join(data_dir, DATASET_MARKER)
  if not tf.io.gfile.exists(marker):
    return None
  recorded = files.read_json(marker, f'{what} marker')
  if recorded.get('settings') != settings:
    return None
  logging.info('Using the %s in %s.', what.lower(), data_dir)
  return recorded

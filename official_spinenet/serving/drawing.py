"""Draws detections (boxes, class names, scores, instance masks) on an image with PIL."""

import io
from typing import Iterable, Mapping, Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw

from official_spinenet.serving import postprocessing
from official_spinenet.utils import files

# Distinct, readable box colours, cycled by class id.
_COLOURS = (
  (230, 25, 75),
  (60, 180, 75),
  (0, 130, 200),
  (245, 130, 48),
  (145, 30, 180),
  (70, 240, 240),
  (240, 50, 230),
  (210, 245, 60),
  (250, 190, 190),
  (0, 128, 128),
)
# Opacity of a mask's fill: the object stays visible under its class colour.
MASK_ALPHA = 0.45


def _colour(cls) -> tuple:
  return _COLOURS[int(cls) % len(_COLOURS)]


def _fill_masks(canvas: Image.Image, masks: Iterable[np.ndarray], classes: np.ndarray):
  """The canvas with each mask filled semi-transparently in its class colour."""
  pixels = np.asarray(canvas, dtype=np.float32)
  for mask, cls in zip(masks, classes):
    inside = np.asarray(mask, dtype=bool)
    pixels[inside] = (1.0 - MASK_ALPHA) * pixels[inside] + MASK_ALPHA * np.array(_colour(cls))
  return Image.fromarray(np.round(pixels).astype(np.uint8))


def draw_detections(
  image: Image.Image,
  boxes: np.ndarray,
  scores: np.ndarray,
  classes: np.ndarray,
  category_names: Mapping[int, str],
  masks: Optional[Iterable[np.ndarray]] = None,
) -> Image.Image:
  """A copy of the image (RGB) with one labelled rectangle (and mask) per detection.

  Args:
    image: the original image (the boxes are in its pixels).
    boxes: [N, 4] (ymin, xmin, ymax, xmax) pixels.
    scores: [N].
    classes: [N] class ids; named by category_names when known.
    category_names: class id -> name.
    masks: None, or per detection a [height, width] mask of the image (non-zero
      inside), filled in the class colour under the boxes; an iterator is read one
      mask at a time (see postprocessing.image_masks).
  """
  canvas = image.convert('RGB')
  if masks is not None:
    canvas = _fill_masks(canvas, masks, classes)
  draw = ImageDraw.Draw(canvas)
  width = max(1, round(min(canvas.size) / 200))
  for box, score, cls in zip(boxes, scores, classes):
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    colour = _colour(cls)
    draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
    label = f'{category_names.get(int(cls), int(cls))} {float(score):.2f}'
    left, top, right, bottom = draw.textbbox((xmin, ymin), label)
    # Label above the box when it fits, else inside its top edge.
    shift = bottom - top + 2 if ymin >= bottom - top + 2 else 0
    draw.rectangle([left, top - shift, right + 2, bottom - shift], fill=colour)
    draw.text((xmin + 1, ymin - shift), label, fill=(255, 255, 255))
  return canvas


def save_drawing(encoded: bytes, detections, category_names: Mapping[int, str], path: str) -> None:
  """Decodes an image, draws its detections and writes the PNG atomically (utils.files).

  Args:
    encoded: the JPEG / PNG file the detections are of.
    detections: a client_lib.ImageDetections, boxes (and masks, if any) in the
      pixels of that image.
    category_names: class id -> name.
    path: the PNG to write (local or gs://).
  """
  with Image.open(io.BytesIO(encoded)) as image:
    masks = None
    if detections.masks is not None:
      size = (image.height, image.width)
      masks = postprocessing.image_masks(detections.masks, detections.boxes, size)
    drawn = draw_detections(
      image, detections.boxes, detections.scores, detections.classes, category_names, masks
    )
  buffer = io.BytesIO()
  drawn.save(buffer, format='PNG')
  files.atomic_write(path, buffer.getvalue())

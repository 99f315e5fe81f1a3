"""Draws detections (boxes, class names, scores) on an image with PIL."""

import io
from typing import Mapping

import numpy as np
from PIL import Image
from PIL import ImageDraw

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


def draw_detections(
  image: Image.Image,
  boxes: np.ndarray,
  scores: np.ndarray,
  classes: np.ndarray,
  category_names: Mapping[int, str],
) -> Image.Image:
  """A copy of the image (RGB) with one labelled rectangle per detection.

  Args:
    image: the original image (the boxes are in its pixels).
    boxes: [N, 4] (ymin, xmin, ymax, xmax) pixels.
    scores: [N].
    classes: [N] class ids; named by category_names when known.
    category_names: class id -> name.
  """
  canvas = image.convert('RGB')
  draw = ImageDraw.Draw(canvas)
  width = max(1, round(min(canvas.size) / 200))
  for box, score, cls in zip(boxes, scores, classes):
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    colour = _COLOURS[int(cls) % len(_COLOURS)]
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
    detections: a client_lib.ImageDetections, boxes in the pixels of that image.
    category_names: class id -> name.
    path: the PNG to write (local or gs://).
  """
  with Image.open(io.BytesIO(encoded)) as image:
    drawn = draw_detections(
      image, detections.boxes, detections.scores, detections.classes, category_names
    )
  buffer = io.BytesIO()
  drawn.save(buffer, format='PNG')
  files.atomic_write(path, buffer.getvalue())

"""Image folders for the classification tests: one folder per class, JPEG and PNG files.

`make_image_folder(root, num_classes, images_per_class, size, seed)` writes
<root>/<colour>/<i>.jpg|png: class c's images are its colour (red, green, blue, ...)
with seeded pixel noise, so a tiny model learns them in a few steps; even indices are
JPEG, odd ones PNG (both formats in every class).
"""

import os

import numpy as np
from PIL import Image

COLOURS = {
  'red': (220, 30, 30),
  'green': (30, 200, 40),
  'blue': (30, 60, 220),
  'yellow': (230, 220, 40),
  'cyan': (40, 210, 220),
  'magenta': (210, 40, 200),
  'white': (240, 240, 240),
  'black': (15, 15, 15),
}


def make_image_folder(
  root: str, num_classes: int = 3, images_per_class: int = 3, size: int = 32, seed: int = 0
) -> str:
  """Writes num_classes folders of images_per_class size x size images; returns root."""
  if not 1 <= num_classes <= len(COLOURS):
    raise ValueError(f'num_classes must be in [1, {len(COLOURS)}], got {num_classes}.')
  rng = np.random.default_rng(seed)
  for name, colour in list(COLOURS.items())[:num_classes]:
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for i in range(images_per_class):
      noise = rng.integers(-25, 26, size=(size, size, 3))
      pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
      extension, image_format = ('jpg', 'JPEG') if i % 2 == 0 else ('png', 'PNG')
      Image.fromarray(pixels).save(os.path.join(folder, f'{i}.{extension}'), format=image_format)
  return str(root)

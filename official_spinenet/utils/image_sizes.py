"""Reading an image size given as one int (square) or as height and width."""

import numbers
from typing import Sequence, Tuple, Union

ImageSize = Union[int, str, Sequence[Union[int, str]]]


def parse_image_size(value: ImageSize, what: str = 'image_size') -> Tuple[int, int]:
  """(height, width) from `128`, `'128'`, `'48,64'`, `(48, 64)` or `['48', '64']`.

  One value means a square image. Flag lists (absl's DEFINE_list gives strings)
  and gin values (ints or pairs) are both accepted.

  Args:
    value: the size as given.
    what: how error messages name the setting (e.g. '--image_size').

  Returns:
    (height, width), positive ints.

  Raises:
    ValueError: not one or two positive integers (the message names `what`).
  """
  if isinstance(value, str):
    value_parts = value.split(',')
  elif isinstance(value, numbers.Integral):
    value_parts = [value]
  else:
    value_parts = value
  try:
    sizes = [_to_int(p) for p in value_parts]
  except (TypeError, ValueError):
    sizes = []
  if len(sizes) not in (1, 2) or min(sizes) < 1:
    raise ValueError(f'{what} must be one positive int (square) or height,width; got {value!r}.')
  return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def _to_int(part) -> int:
  if isinstance(part, bool):
    raise TypeError('a bool is not a size')
  if isinstance(part, numbers.Integral):
    return int(part)
  if isinstance(part, str) and part.strip().isdigit():
    return int(part)
  raise ValueError(f'{part!r} is not an integer')

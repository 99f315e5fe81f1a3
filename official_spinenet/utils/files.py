"""Atomic file writes that work on local paths and on `gs://` (through tf.io.gfile).

Every output the package writes (metrics, JSON, specs, images, TFRecord shards,
TFLite files) goes through `atomic_write` or `atomic_output`: the data is written to
a temporary name beside the target and renamed into place, so a reader sees the old
file or the new one, never half of one; a failure removes the temporary file and
leaves the previous file as it was.
"""

import contextlib
import json
import math
import os
from typing import Any, Iterator, Union
import uuid

import numpy as np
import tensorflow as tf


def _temporary_name(path: str) -> str:
  return f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'


def make_parent_dirs(path: str) -> None:
  """Creates the folder that will hold `path` (no-op if it exists)."""
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)


def _remove_quietly(path: str) -> None:
  try:
    if tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  except tf.errors.OpError:
    pass


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
  """Yields a temporary path to write; on success it is renamed onto `path`.

  For writers that want a path of their own (PIL's save, tf.io.TFRecordWriter):

    with atomic_output('out.png') as tmp:
      image.save(tmp, format='PNG')

  On an exception the temporary file is removed and `path` is untouched.
  """
  make_parent_dirs(path)
  tmp = _temporary_name(path)
  try:
    yield tmp
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    _remove_quietly(tmp)
    raise


def atomic_write(path: str, data: Union[str, bytes]) -> None:
  """Writes text or bytes to `path` atomically (see module docstring)."""
  with atomic_output(path) as tmp:
    with tf.io.gfile.GFile(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
      f.write(data)


def json_safe(value: Any) -> Any:
  """numpy scalars / arrays -> Python values; NaN / inf -> None (JSON has neither)."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json_atomically(data: Any, path: str, indent: Union[int, None] = 1) -> None:
  """Writes `data` as JSON to `path` atomically (numpy values and NaN made JSON-safe)."""
  atomic_write(path, json.dumps(json_safe(data), indent=indent, allow_nan=False))


def read_json(path: str, what: str = 'JSON file') -> Any:
  """Reads a JSON file; a missing or malformed file is a ValueError naming it."""
  try:
    with tf.io.gfile.GFile(path, 'r') as f:
      return json.load(f)
  except tf.errors.NotFoundError as e:
    raise ValueError(f'{what} {path!r} does not exist.') from e
  except tf.errors.OpError as e:  # a folder, no permission, ...
    raise ValueError(f'{what} {path!r} cannot be read: {e.message}') from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{what} {path!r} is not valid JSON: {e}') from e

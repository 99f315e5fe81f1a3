"""Checked decoding of the images a serving request sends: JPEG / PNG in, a named problem out.

Every check is a graph op, so a loaded model refuses a bad image with
`tf.errors.InvalidArgumentError` and answers the next request. Each message starts with
the input's name and index and never holds the input's bytes, e.g.

  image_bytes[1]: GIF is not supported; send JPEG or PNG
  tf_examples[0] image/encoded: the image has 301x400 = 120400 pixels, more than ...

Why no bytes: some ops put the bytes they failed on in their error (ParseExample's
"value: '...'", Substr's out-of-range message), and Python then fails to read the
error text as UTF-8 and raises UnicodeDecodeError instead of the error. So every op
that may fail on a request's bytes runs under `checked_attempt`: its failure becomes a
flag, and an assertion on the flag names the problem.

Formats are told by their magic bytes. JPEG and PNG (the formats of the training and
evaluation data) are decoded; GIF, BMP, WebP, TIFF, HEIF and AVIF are refused by name;
anything else is "not a JPEG or PNG file" with its first bytes in hex. The size is read
from the header and checked before decoding, so an oversized image (a "decompression
bomb") is refused without its pixels being allocated.
"""

from typing import Any, Callable, Sequence, Tuple, Union

import tensorflow as tf

# An input's name in messages: 'image_bytes[1]' (a Python string or a string scalar).
Name = Union[str, tf.Tensor]

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# PNG: 8-byte signature, then the IHDR chunk: length (4), type (4), width (4, big
# endian), height (4), ... so the size is at bytes 16..23 of any valid PNG.
_PNG_SIZE_OFFSET = 16
_PNG_MIN_HEADER_BYTES = 33  # signature + complete IHDR chunk (4 + 4 + 13 + 4)
_HEIF_BRANDS = (b'heic', b'heix', b'hevc', b'hevx', b'heim', b'heis', b'hevm', b'hevs', b'mif1')
# Formats refused by name: (name, alternatives); an alternative is a tuple of
# (offset, bytes) that must all match.
_REFUSED_FORMATS = (
  ('GIF', (((0, b'GIF87a'),), ((0, b'GIF89a'),))),
  ('BMP', (((0, b'BM'),),)),
  ('WebP', (((0, b'RIFF'), (8, b'WEBP')),)),
  ('TIFF', (((0, b'II*\x00'),), ((0, b'MM\x00*'),))),
  ('HEIF', tuple(((4, b'ftyp'), (8, brand)) for brand in _HEIF_BRANDS)),
  ('AVIF', (((4, b'ftyp'), (8, b'avif')), ((4, b'ftyp'), (8, b'avis')))),
)
_HEADER_BYTES = 16  # every magic above lies in the first 16 bytes
_SHOWN_BYTES = 8  # first bytes shown (in hex) for an unknown format
_SEND = '; send JPEG or PNG'


def input_name(what: str, index: tf.Tensor) -> tf.Tensor:
  """'what[index]' as a string scalar (tf.strings.format would quote a string)."""
  return tf.strings.join([what, '[', tf.strings.as_string(index), ']'])


def assert_that(condition: tf.Tensor, what: Name, *parts: Any) -> tf.Operation:
  """An assertion whose message is 'what: ' followed by the parts, joined.

  Args:
    condition: bool scalar.
    what: the input's name.
    *parts: Python strings, string scalars, or numeric scalars (written in decimal).
  """
  pieces = [what, ': ']
  for part in parts:
    is_text = isinstance(part, (str, bytes)) or tf.convert_to_tensor(part).dtype == tf.string
    pieces.append(part if is_text else tf.strings.as_string(part))
  return tf.debugging.Assert(condition, [tf.strings.join(pieces)], summarize=1)


def _attempt(fn: Callable[[Any], Any], value: Any, fallback: Any) -> Tuple[Any, tf.Tensor]:
  """(fn(value), True), or (fallback, False) when fn fails: a graph has no try / except.

  tf.data's ignore_errors drops the element whose map failed, so the fallback element
  comes first; the failure's message, which may hold the input's bytes, is dropped.

  Args:
    fn: tensors -> tensors (nested structures are fine).
    value: fn's input.
    fallback: what to return instead: fn's output structure and dtypes, shapes
      compatible with it.
  """
  tried = tf.data.Dataset.from_tensors(value).map(lambda v: (fn(v), True)).ignore_errors()
  fallback = tf.data.Dataset.from_tensors((fallback, False))
  return tried.concatenate(fallback).take(1).get_single_element()


def checked_attempt(fn: Callable[[Any], Any], value: Any, fallback: Any, what: Name, *parts):
  """fn(value), after an assertion that it did not fail: 'what: <parts>' (see assert_that).

  The failure's own message, which may hold the input's bytes, never reaches the caller.
  fn, value and fallback are as for `_attempt`.
  """
  result, ok = _attempt(fn, value, fallback)
  with tf.control_dependencies([assert_that(ok, what, *parts)]):
    return tf.nest.map_structure(tf.identity, result)


def _matches(head: tf.Tensor, alternatives) -> tf.Tensor:
  """Whether head (zero-padded to _HEADER_BYTES or more) matches any alternative."""

  def at(offset: int, magic: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(head, offset, len(magic)), magic)

  return tf.reduce_any([tf.reduce_all([at(*m) for m in alt]) for alt in alternatives])


def _hex_head(encoded: tf.Tensor) -> tf.Tensor:
  """The first _SHOWN_BYTES bytes as hex pairs, '68 65 6c 6c'."""
  table = tf.constant([f'{i:02x}' for i in range(256)])
  head = tf.io.decode_raw(tf.strings.substr(encoded, 0, _SHOWN_BYTES), tf.uint8)
  return tf.strings.reduce_join(tf.gather(table, tf.cast(head, tf.int32)), separator=' ')


def _checked_format(encoded: tf.Tensor, what: Name) -> tf.Tensor:
  """True for a JPEG, False for a PNG, after assertions refusing anything else."""
  length = tf.strings.length(encoded)
  not_empty = assert_that(length > 0, what, 'empty image bytes (0 bytes)')
  with tf.control_dependencies([not_empty]):
    # Substr at an offset past the end fails (and echoes the bytes): pad a copy of the head.
    head = tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES), b'\0' * _HEADER_BYTES])
  is_jpeg = _matches(head, (((0, _JPEG_MAGIC),),))
  is_png = _matches(head, (((0, _PNG_MAGIC),),))
  refused = tf.stack([_matches(head, alternatives) for _, alternatives in _REFUSED_FORMATS])
  name = tf.gather([n for n, _ in _REFUSED_FORMATS], tf.argmax(tf.cast(refused, tf.int32)))
  checks = [
    assert_that(tf.logical_not(tf.reduce_any(refused)), what, name, ' is not supported', _SEND),
    assert_that(
      tf.logical_or(is_jpeg, is_png),
      what,
      'not a JPEG or PNG file (',
      length,
      ' bytes, starting with ',
      _hex_head(encoded),
      ')',
      _SEND,
    ),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(is_jpeg)


def _png_size(encoded: tf.Tensor, what: Name) -> tf.Tensor:
  """[height, width] int64 read from a PNG's IHDR chunk (no decoding)."""
  length = tf.strings.length(encoded)
  long_enough = assert_that(
    length >= _PNG_MIN_HEADER_BYTES,
    what,
    'truncated PNG (',
    length,
    f' bytes; the header alone needs {_PNG_MIN_HEADER_BYTES})',
  )
  with tf.control_dependencies([long_enough]):
    # Unsigned 32-bit width and height, as big-endian 16-bit halves (DecodeRaw has no
    # uint32): a corrupt header's huge size is then over the pixel limit, not negative.
    halves = tf.io.decode_raw(
      tf.strings.substr(encoded, _PNG_SIZE_OFFSET, 8), tf.uint16, little_endian=False
    )
  halves = tf.cast(halves, tf.int64)
  width_height = halves[0::2] * 65536 + halves[1::2]
  return tf.reverse(width_height, [0])


def _jpeg_size(encoded: tf.Tensor, what: Name) -> tf.Tensor:
  """[height, width] int64 read from a JPEG's frame header (no decoding)."""
  return checked_attempt(
    lambda data: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64),
    encoded,
    tf.zeros([2], tf.int64),
    what,
    'the JPEG header is corrupt or truncated (',
    tf.strings.length(encoded),
    ' bytes)',
  )


def _header(encoded: tf.Tensor, what: Name) -> Tuple[tf.Tensor, tf.Tensor]:
  """(is_jpeg, [height, width] int64) of a JPEG or PNG, from its header."""
  is_jpeg = _checked_format(encoded, what)
  # Only the taken branch runs, so the PNG parse never sees JPEG bytes.
  size = tf.cond(is_jpeg, lambda: _jpeg_size(encoded, what), lambda: _png_size(encoded, what))
  return is_jpeg, tf.reshape(size, [2])


def encoded_image_size(encoded: tf.Tensor, what: Name = 'image') -> tf.Tensor:
  """[height, width] (int64) of a JPEG or PNG, read from its header without decoding.

  Fails (InvalidArgumentError naming `what`) on empty bytes, another format, a
  truncated PNG header and a corrupt JPEG header.

  Args:
    encoded: a scalar string, the file bytes.
    what: names the input in the messages, e.g. 'image_bytes[1]'.
  """
  return _header(encoded, what)[1]


def check_image_size(
  height: tf.Tensor, width: tf.Tensor, max_image_pixels: int, what: Name = 'image'
) -> Sequence[tf.Operation]:
  """Assertion ops: the image is not zero-sized and has at most max_image_pixels pixels.

  Args:
    height, width: int scalars.
    max_image_pixels: the largest height * width accepted.
    what: names the input in the messages (e.g. 'image_bytes[0]').

  Returns:
    The assertion ops; run them (control dependencies) before using the image.
  """
  height = tf.cast(height, tf.int64)
  width = tf.cast(width, tf.int64)
  return [
    assert_that(
      tf.logical_and(height > 0, width > 0),
      what,
      'the image is zero-sized (',
      height,
      'x',
      width,
      ' pixels, height x width)',
    ),
    assert_that(
      height * width <= max_image_pixels,
      what,
      'the image has ',
      height,
      'x',
      width,
      ' = ',
      height * width,
      f' pixels, more than max_image_pixels={max_image_pixels}; send a smaller image or '
      'export with a larger max_image_pixels',
    ),
  ]


def decode_image(encoded: tf.Tensor, max_image_pixels: int, what: Name = 'image') -> tf.Tensor:
  """One JPEG or PNG -> uint8 [H, W, 3], after checking its format and header size.

  Grey and RGBA images become RGB (channels=3), as in Model Garden's TfExampleDecoder.
  Image data the decoder cannot read fails with "the PNG could not be decoded", except
  JPEG scan data damaged after an intact header, which libjpeg decodes with artifacts
  (as PIL does).

  Args:
    encoded: a scalar string, the file bytes.
    max_image_pixels: refuse images with more pixels (checked before decoding).
    what: names the input in the messages.
  """
  is_jpeg, size = _header(encoded, what)
  with tf.control_dependencies(check_image_size(size[0], size[1], max_image_pixels, what)):
    image = checked_attempt(
      lambda data: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
      encoded,
      tf.zeros([1, 1, 3], tf.uint8),
      what,
      'the ',
      tf.where(is_jpeg, 'JPEG', 'PNG'),
      ' could not be decoded (corrupt or truncated data, ',
      tf.strings.length(encoded),
      ' bytes)',
    )
  image.set_shape([None, None, 3])
  return image


def _parse_image_feature(serialized: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(number of image/encoded values, the first or b'') of one serialized tf.Example."""
  features = tf.io.parse_single_example(
    serialized, {'image/encoded': tf.io.VarLenFeature(tf.string)}
  )
  values = features['image/encoded'].values
  return tf.size(values), tf.concat([values, ['']], 0)[0]


def example_image_bytes(serialized: tf.Tensor, what: Name = 'tf_example') -> tf.Tensor:
  """The `image/encoded` bytes of one serialized tf.Example, after checks naming `what`.

  The project's records (data/tfexample.py, the layout Model Garden's TfExampleDecoder
  reads) keep the JPEG / PNG file under `image/encoded`; the other features (boxes,
  ids) are not needed to predict. Refused: bytes that are not a tf.Example (or hold
  image/encoded as another type than bytes), an Example without image/encoded, and one
  with several values in it.

  Args:
    serialized: a scalar string.
    what: names the input in the messages, e.g. 'tf_examples[2]'.
  """
  count, encoded = checked_attempt(
    _parse_image_feature,
    serialized,
    (tf.constant(0), tf.constant(b'')),
    what,
    'not a serialized tf.Example with a bytes feature image/encoded (',
    tf.strings.length(serialized),
    ' bytes that do not parse as one)',
  )
  checks = [
    assert_that(
      count > 0, what, 'the tf.Example has no image/encoded feature (the JPEG or PNG file)'
    ),
    assert_that(count < 2, what, 'image/encoded holds ', count, ' values; one image is expected'),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(encoded)

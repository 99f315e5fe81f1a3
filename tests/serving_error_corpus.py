"""Bad serving requests, built in code, each with the first line of the problem it must report.

`bad_requests(max_image_pixels)` gives requests to the three signatures of an export
(image_bytes, image_tensor, tf_example; detector and classifier alike, their decoding
being shared): other formats (GIF, BMP, WebP, TIFF, HEIF, AVIF), random, non-UTF-8 and
empty bytes, truncated and corrupt JPEG / PNG, headers of decompression bombs, zero
sizes, wrong ranks and dtypes, empty and mixed batches, tf.Examples that are not protos
or lack the image or hold a GIF. `thin_images()` are valid images with a side of a
pixel or a few, which must be served.
"""

import dataclasses
import io
import struct
from typing import Any, List
import zlib

import numpy as np
from PIL import Image
import tensorflow as tf

from tests import export_fixtures


@dataclasses.dataclass(frozen=True)
class BadRequest:
  """One request that must be refused.

  Attributes:
    name: the test id.
    signature: 'image_bytes', 'image_tensor' or 'tf_example'.
    values: the input (a list of bytes, or a numpy array), made a tensor of dtype.
    dtype: the tensor's dtype.
    problem: regex the reported problem (client_lib.describe_error) must match from its
      start.
  """

  name: str
  signature: str
  values: Any
  dtype: tf.DType
  problem: str

  def tensor(self) -> tf.Tensor:
    return tf.constant(self.values, dtype=self.dtype)

  def byte_strings(self) -> List[bytes]:
    """The byte strings the request carries (none for an image tensor)."""
    if self.dtype != tf.string:
      return []
    return [bytes(v) for v in np.reshape(np.array(self.values, dtype=object), [-1])]


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)


def encode(image: np.ndarray, image_format: str) -> bytes:
  """The image as a file of image_format (PIL's name: PNG, JPEG, GIF, BMP, WEBP, TIFF)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=image_format)
  return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
  """A 4x4 PNG whose IHDR (valid CRC) claims width x height: a decompression-bomb header."""
  png = bytearray(encode(_image(4, 4), 'PNG'))
  png[16:24] = struct.pack('>II', width, height)
  png[29:33] = struct.pack('>I', zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
  return bytes(png)


def jpeg_with_size(width: int, height: int) -> bytes:
  """An 8x8 baseline JPEG whose frame header (SOF0) claims width x height."""
  jpeg = bytearray(encode(_image(8, 8), 'JPEG'))
  sof = jpeg.index(b'\xff\xc0')
  jpeg[sof + 5 : sof + 9] = struct.pack('>HH', height, width)
  return bytes(jpeg)


def example(**features) -> bytes:
  """A serialized tf.Example: bytes / list of bytes -> bytes_list, ints -> int64_list."""
  feature = {}
  for key, value in features.items():
    values = value if isinstance(value, list) else [value]
    if isinstance(values[0], bytes):
      feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    else:
      feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def good_png() -> bytes:
  return export_fixtures.encode(export_fixtures.sample_images()[0])


def _pixels(height: int, width: int, limit: int) -> str:
  return (
    f'the image has {height}x{width} = {height * width} pixels, more than max_image_pixels={limit}'
  )


def _format_cases(png: bytes) -> List[tuple]:
  """(name, [bytes], problem after 'image_bytes[0]: ') of single files."""
  image = _image(16, 16)
  jpeg = encode(_image(64, 64), 'JPEG')
  not_supported = '{} is not supported; send JPEG or PNG$'
  unknown = r'not a JPEG or PNG file \({} bytes, starting with {}\); send JPEG or PNG$'
  random_bytes = b'\x00' + np.random.default_rng(1).bytes(63)
  return [
    ('gif', encode(image, 'GIF'), not_supported.format('GIF')),
    ('gif87a', b'GIF87a' + b'\x10\x00\x10\x00' + b'\x80' * 40, not_supported.format('GIF')),
    ('bmp', encode(image, 'BMP'), not_supported.format('BMP')),
    ('webp', encode(image, 'WEBP'), not_supported.format('WebP')),
    ('tiff', encode(image, 'TIFF'), not_supported.format('TIFF')),
    ('tiff_big_endian', b'MM\x00*\x00\x00\x00\x08' + b'\xfe' * 40, not_supported.format('TIFF')),
    ('heif', b'\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic' + b'\x81' * 40, 'HEIF is not'),
    ('avif', b'\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1' + b'\x81' * 40, 'AVIF is not'),
    ('random_bytes', random_bytes, unknown.format(64, random_bytes[:8].hex(' '))),
    ('non_utf8', b'\x80\x81\xfe\xff\xc3\x28' * 4, unknown.format(24, '80 81 fe ff c3 28 80 81')),
    ('text', b'hello, I am text, not a picture', unknown.format(31, '68 65 6c 6c 6f 2c 20 49')),
    ('html_error_page', b'<!DOCTYPE html><title>404</title>', unknown.format(33, '3c 21 44 4f .*')),
    ('one_zero_byte', b'\x00', unknown.format(1, '00')),
    ('empty_string', b'', r'empty image bytes \(0 bytes\)$'),
    ('jpeg_magic_only', b'\xff\xd8\xff', r'the JPEG header is corrupt or truncated \(3 bytes\)$'),
    ('jpeg_garbage_header', jpeg[:4] + b'\x13' * 200, 'the JPEG header is corrupt or truncated'),
    ('jpeg_truncated', jpeg[: len(jpeg) // 2], 'the JPEG could not be decoded'),
    ('png_signature_only', png[:8], r'truncated PNG \(8 bytes; the header alone needs 33\)$'),
    ('png_cut_in_header', png[:20], r'truncated PNG \(20 bytes'),
    ('png_header_only', png[:40], r'the PNG could not be decoded \(corrupt or truncated data, 40'),
    ('png_truncated', png[: len(png) // 2], 'the PNG could not be decoded'),
    ('png_corrupt_data', png[:60] + b'\0' * 40 + png[100:], 'the PNG could not be decoded'),
    ('png_zero_width', export_fixtures.zero_width_png(), r'the image is zero-sized \(5x0 pixels'),
    ('png_zero_height', png_with_size(7, 0), r'the image is zero-sized \(0x7 pixels'),
  ]


def _limit_cases(limit: int) -> List[tuple]:
  """Images over the pixel limit (the last ones by their header alone)."""
  over = encode(_image(301, 400), 'PNG')
  return [
    ('png_over_limit', over, _pixels(301, 400, limit)),
    ('png_bomb_header', png_with_size(100_000, 100_000), _pixels(100_000, 100_000, limit)),
    ('png_max_uint32_width', png_with_size(2**32 - 1, 1), _pixels(1, 2**32 - 1, limit)),
    ('jpeg_bomb_header', jpeg_with_size(60_000, 60_000), _pixels(60_000, 60_000, limit)),
  ]


def _image_bytes_requests(limit: int) -> List[BadRequest]:
  png = good_png()
  jpeg = export_fixtures.encode(export_fixtures.sample_images()[1], 'JPEG')
  single = _format_cases(png) + _limit_cases(limit)
  requests = [
    BadRequest(name, 'image_bytes', [data], tf.string, r'image_bytes\[0\]: ' + problem)
    for name, data, problem in single
  ]
  gif = encode(_image(8, 8), 'GIF')
  return requests + [
    BadRequest(
      'batch_with_gif', 'image_bytes', [png, gif, png], tf.string, r'image_bytes\[1\]: GIF'
    ),
    BadRequest(
      'batch_with_empty', 'image_bytes', [png, b''], tf.string, r'image_bytes\[1\]: empty'
    ),
    BadRequest(
      'batch_with_truncated',
      'image_bytes',
      [jpeg, png, png[:50]],
      tf.string,
      r'image_bytes\[2\]: the PNG could not be decoded',
    ),
    BadRequest(
      'empty_batch', 'image_bytes', [], tf.string, r'image_bytes: empty batch \(0 images\)'
    ),
    BadRequest(
      'rank_0', 'image_bytes', png, tf.string, r'Shape of tensor image_bytes \[\] is not compatible'
    ),
    BadRequest('rank_2', 'image_bytes', [[png]], tf.string, r'Shape of tensor image_bytes \[1,1\]'),
    BadRequest('int32', 'image_bytes', [1, 2], tf.int32, r'.*expected to be a string tensor'),
  ]


def _image_tensor_requests(limit: int) -> List[BadRequest]:
  def zeros(*shape, dtype=np.uint8):
    return np.zeros(shape, dtype)

  shape_error = (
    r'Shape of tensor images \[{}\] is not compatible with expected shape \[\?,\?,\?,3\]'
  )
  cases = [
    ('zero_height', zeros(1, 0, 7, 3), r'images: the image is zero-sized \(0x7 pixels'),
    ('zero_width', zeros(1, 7, 0, 3), r'images: the image is zero-sized \(7x0 pixels'),
    ('over_limit', zeros(1, 301, 400, 3), 'images: ' + _pixels(301, 400, limit)),
    ('empty_batch', zeros(0, 8, 8, 3), r'images: empty batch \(0 images\)'),
    ('rank_3', zeros(8, 8, 3), shape_error.format('8,8,3')),
    ('rank_5', zeros(1, 1, 8, 8, 3), shape_error.format('1,1,8,8,3')),
    ('one_channel', zeros(1, 8, 8, 1), shape_error.format('1,8,8,1')),
    ('four_channels', zeros(1, 8, 8, 4), shape_error.format('1,8,8,4')),
  ]
  requests = [
    BadRequest(name, 'image_tensor', values, tf.uint8, problem) for name, values, problem in cases
  ]
  return requests + [
    BadRequest(
      'float32', 'image_tensor', zeros(1, 8, 8, 3, dtype=np.float32), tf.float32, r'.*uint8 tensor'
    ),
    BadRequest('strings', 'image_tensor', [good_png()], tf.string, r'.*expected to be a uint8'),
  ]


def _tf_example_requests(limit: int) -> List[BadRequest]:
  png = good_png()
  gif = encode(_image(8, 8), 'GIF')
  not_example = r'tf_examples\[0\]: not a serialized tf.Example with a bytes feature image/encoded'
  image = r'tf_examples\[{}\] image/encoded: '
  cases = [
    ('not_a_proto', [b'\x80\x81\xfe not a tf.Example \xff'], not_example),
    ('text', [b'not a tf.Example'], not_example),
    ('image_as_int64', [example(**{'image/encoded': 7})], not_example),
    (
      'no_image',
      [example(**{'image/height': 7})],
      r'tf_examples\[0\]: the tf.Example has no image',
    ),
    ('empty_example', [example()], r'tf_examples\[0\]: the tf.Example has no image/encoded'),
    ('two_images', [example(**{'image/encoded': [png, png]})], r'.*holds 2 values; one image'),
    ('empty_image', [example(**{'image/encoded': b''})], image.format(0) + 'empty image bytes'),
    ('gif', [example(**{'image/encoded': gif})], image.format(0) + 'GIF is not supported'),
    ('non_utf8_image', [example(**{'image/encoded': b'\x80\xfe' * 9})], image.format(0) + 'not a'),
    ('truncated_png', [example(**{'image/encoded': png[:60]})], image.format(0) + 'the PNG could'),
    (
      'bomb_header',
      [example(**{'image/encoded': png_with_size(100_000, 100_000)})],
      image.format(0) + _pixels(100_000, 100_000, limit),
    ),
    (
      'batch_with_gif',
      [example(**{'image/encoded': png}), example(**{'image/encoded': gif})],
      image.format(1) + 'GIF',
    ),
    ('empty_batch', [], r'tf_examples: empty batch'),
    ('rank_0', example(**{'image/encoded': png}), r'Shape of tensor tf_examples \[\]'),
  ]
  return [
    BadRequest(name, 'tf_example', values, tf.string, problem) for name, values, problem in cases
  ]


def bad_requests(max_image_pixels: int) -> List[BadRequest]:
  """Every bad request, for an export made with this max_image_pixels."""
  return (
    _image_bytes_requests(max_image_pixels)
    + _image_tensor_requests(max_image_pixels)
    + _tf_example_requests(max_image_pixels)
  )


THIN_SIZES = ((1, 1000), (1000, 1), (3, 1000), (1, 1))


def thin_images() -> List[np.ndarray]:
  """Valid images a pixel or a few thin (height x width of THIN_SIZES)."""
  return [_image(h, w, seed=i) for i, (h, w) in enumerate(THIN_SIZES)]

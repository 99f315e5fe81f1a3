"""Bad TFRecord files made from the shapes data, for the corrupt-data tests.

Each kind is what a user meets: a shard cut short by a failed copy, a bit flip, an
image saved under a .tfrecord name, an empty file, and a shard whose records read
but do not decode.
"""

import glob
import os
import shutil
from typing import Dict

import tensorflow as tf

from official_spinenet.data import record_check


def good_shard(shapes_data) -> str:
  """The first training shard of the shapes data (4 records)."""
  return sorted(shapes_data['train']['tfrecord_files'])[0]


def make_corrupt_files(shapes_data, directory: str) -> Dict[str, str]:
  """Writes one file of each kind into `directory`; {kind: path}.

  Kinds: 'truncated' (the good shard without its last 1000 bytes: 3 readable records),
  'bit_flip' (a bit of record 1's data flipped: 1 readable record), 'png' (an image
  named .tfrecord), 'empty', 'undecodable' (4 readable records of which the 2nd, not a
  tf.Example, and the last, an image that does not decode, fail).
  """
  os.makedirs(directory, exist_ok=True)
  source = good_shard(shapes_data)
  with open(source, 'rb') as f:
    data = f.read()
  paths = {
    kind: os.path.join(directory, f'{kind}.tfrecord')
    for kind in ('truncated', 'bit_flip', 'png', 'empty', 'undecodable')
  }
  with open(paths['truncated'], 'wb') as f:
    f.write(data[:-1000])
  flipped = bytearray(data)
  flipped[record_check.record_offsets(source)[1] + record_check.HEADER_BYTES + 100] ^= 0x08
  with open(paths['bit_flip'], 'wb') as f:
    f.write(bytes(flipped))
  image = sorted(glob.glob(os.path.join(shapes_data['train']['image_dir'], '*.png')))[0]
  shutil.copy(image, paths['png'])
  open(paths['empty'], 'wb').close()
  records = [r.numpy() for r in tf.data.TFRecordDataset(source).take(2)]
  bad_image = tf.train.Example.FromString(records[1])
  bad_image.features.feature['image/encoded'].bytes_list.value[0] = b'GIF89a not an image'
  with tf.io.TFRecordWriter(paths['undecodable']) as writer:
    for record in (records[0], b'\x00\x01 not a tf.Example', records[1]):
      writer.write(record)
    writer.write(bad_image.SerializeToString())
  return paths

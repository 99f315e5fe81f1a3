"""Tests for the image-folder -> classification TFRecord converter and its binary.

Records are read back with tf-models-official's classification Decoder, the one
the input pipeline uses.
"""

import glob
import io
import os
import re

import numpy as np
from official.vision.dataloaders import classification_input as mg_classification_input
from PIL import Image
import pytest
import tensorflow as tf

from official_spinenet.data import image_folder_tfrecord
from tests import binaries
from tests import classification_fixtures


def _read_records(pattern):
  decoder = mg_classification_input.Decoder()
  records = []
  for path in sorted(glob.glob(pattern)):
    for serialized in tf.data.TFRecordDataset(path):
      example = tf.train.Example.FromString(serialized.numpy())
      decoded = decoder.decode(serialized)
      records.append(
        {
          'encoded': decoded['image/encoded'].numpy(),
          'label': int(decoded['image/class/label']),
          'text': example.features.feature['image/class/text'].bytes_list.value[0].decode(),
          'filename': example.features.feature['image/filename'].bytes_list.value[0].decode(),
          'format': example.features.feature['image/format'].bytes_list.value[0].decode(),
          'height': example.features.feature['image/height'].int64_list.value[0],
        }
      )
  return records


def _convert(image_dir, tmp_path, **kwargs):
  return image_folder_tfrecord.convert_image_folder_to_tfrecords(
    str(image_dir), str(tmp_path / 'out' / 'train'), show_progress=False, **kwargs
  )


def test_round_trip(tmp_path):
  image_dir = classification_fixtures.make_image_folder(
    str(tmp_path / 'images'), num_classes=3, images_per_class=3, size=20
  )
  # A hidden file and a file at the top are ignored; a sub-folder's images count.
  open(os.path.join(image_dir, 'red', '.DS_Store'), 'wb').close()
  open(os.path.join(image_dir, 'README.txt'), 'w').close()
  os.makedirs(os.path.join(image_dir, 'blue', 'more'))
  Image.new('RGB', (8, 6), (0, 0, 255)).save(os.path.join(image_dir, 'blue', 'more', 'x.png'))
  summary = _convert(image_dir, tmp_path, num_shards=2)

  assert summary.class_names == ['blue', 'green', 'red']
  assert summary.images_per_class == [4, 3, 3]
  assert (summary.num_images, summary.num_skipped, summary.num_reencoded) == (10, 0, 0)
  assert [os.path.basename(p) for p in summary.tfrecord_files] == [
    'train-00000-of-00002.tfrecord',
    'train-00001-of-00002.tfrecord',
  ]
  with open(summary.labels_file, encoding='utf-8') as f:
    assert f.read() == 'blue\ngreen\nred\n'
  assert image_folder_tfrecord.read_class_names(summary.labels_file) == summary.class_names
  assert summary.line().startswith('Wrote 10 images of 3 classes to ')

  records = _read_records(summary.tfrecord_pattern)
  assert sorted(r['filename'] for r in records) == sorted(
    os.path.relpath(p, image_dir)
    for p in glob.glob(os.path.join(image_dir, '*', '**', '*.*'), recursive=True)
    if not p.endswith('README.txt')
  )
  for record in records:
    assert record['text'] == summary.class_names[record['label']]
    assert record['filename'].split(os.sep)[0] == record['text']
    with open(os.path.join(image_dir, record['filename']), 'rb') as f:
      assert record['encoded'] == f.read()  # JPEG and PNG kept byte for byte
    assert record['format'] == ('jpeg' if record['filename'].endswith('.jpg') else 'png')
  assert {r['height'] for r in records} == {20, 6}
  # Shuffled: the records are not grouped by class.
  labels = [r['label'] for r in records]
  assert labels != sorted(labels)


def test_threads_write_the_same_shards(tmp_path):
  image_dir = classification_fixtures.make_image_folder(
    str(tmp_path / 'images'), num_classes=3, images_per_class=30, size=8
  )
  shards = []
  for workers in (1, 3):
    summary = image_folder_tfrecord.convert_image_folder_to_tfrecords(
      image_dir,
      str(tmp_path / f'out{workers}' / 'train'),
      2,
      num_workers=workers,
      show_progress=False,
    )
    shards.append([open(p, 'rb').read() for p in summary.tfrecord_files])
  assert shards[0] == shards[1]


def test_other_formats_are_reencoded_as_png(tmp_path):
  image_dir = tmp_path / 'images'
  for name in ('a', 'b'):
    (image_dir / name).mkdir(parents=True)
  pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  Image.fromarray(pixels).save(image_dir / 'a' / 'x.bmp', format='BMP')
  Image.fromarray(pixels).convert('CMYK').save(image_dir / 'b' / 'y.jpg', format='JPEG')
  summary = _convert(image_dir, tmp_path, num_shards=1)
  assert summary.num_reencoded == 2
  for record in _read_records(summary.tfrecord_pattern):
    assert record['format'] == 'png'
    decoded = tf.io.decode_image(record['encoded'], channels=3).numpy()
    assert decoded.shape == (4, 5, 3)
    if record['text'] == 'a':
      np.testing.assert_array_equal(decoded, pixels)


def _folder_with_bad_file(tmp_path):
  image_dir = classification_fixtures.make_image_folder(
    str(tmp_path / 'images'), num_classes=2, images_per_class=2, size=8
  )
  bad = os.path.join(image_dir, 'green', 'notes.txt')
  with open(bad, 'w') as f:
    f.write('not an image')
  truncated = os.path.join(image_dir, 'red', 'truncated.png')
  with open(os.path.join(image_dir, 'red', '1.png'), 'rb') as f:
    data = f.read()
  with open(truncated, 'wb') as f:
    f.write(data[: len(data) // 2])
  return image_dir, bad, truncated


def test_unreadable_files_fail_naming_the_file(tmp_path):
  image_dir, bad, truncated = _folder_with_bad_file(tmp_path)
  with pytest.raises(ValueError, match=re.escape(f'{bad} is not a readable image')):
    _convert(image_dir, tmp_path)
  os.remove(bad)
  with pytest.raises(ValueError, match=re.escape(f'{truncated} does not decode')):
    _convert(image_dir, tmp_path)
  # Nothing is left behind: no shards, no labels.txt, no temporary files.
  assert not os.path.exists(tmp_path / 'out') or not os.listdir(tmp_path / 'out')


def test_skip_unreadable_counts_the_files(tmp_path):
  image_dir, _, _ = _folder_with_bad_file(tmp_path)
  summary = _convert(image_dir, tmp_path, skip_unreadable=True)
  assert (summary.num_images, summary.num_skipped) == (4, 2)
  assert summary.images_per_class == [2, 2]
  assert '2 unreadable files skipped' in summary.line()


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist or is not a folder'):
    _convert(tmp_path / 'missing', tmp_path)
  image_dir = tmp_path / 'images'
  image_dir.mkdir()
  (image_dir / 'stray.jpg').write_bytes(b'')
  with pytest.raises(ValueError, match='has no class folders'):
    _convert(image_dir, tmp_path)
  classification_fixtures.make_image_folder(str(image_dir), num_classes=2, size=8)
  (image_dir / 'zebra').mkdir()
  with pytest.raises(
    ValueError, match=re.escape(f'Class folder {image_dir / "zebra"} has no image files')
  ):
    _convert(image_dir, tmp_path)
  (image_dir / 'zebra' / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
  with pytest.raises(ValueError, match='zebra.*was unreadable and skipped'):
    _convert(image_dir, tmp_path, skip_unreadable=True)
  assert not os.path.exists(tmp_path / 'out') or not os.listdir(tmp_path / 'out')


def test_labels_file_of_other_classes_is_not_overwritten(tmp_path):
  train_dir = classification_fixtures.make_image_folder(str(tmp_path / 'train'), size=8)
  _convert(train_dir, tmp_path)
  # The validation split of the same classes shares labels.txt.
  val_dir = classification_fixtures.make_image_folder(str(tmp_path / 'val'), size=8, seed=1)
  image_folder_tfrecord.convert_image_folder_to_tfrecords(
    val_dir, str(tmp_path / 'out' / 'val'), num_shards=1, show_progress=False
  )
  other_dir = classification_fixtures.make_image_folder(
    str(tmp_path / 'other'), num_classes=2, size=8
  )
  with pytest.raises(ValueError, match='already names 3 classes that differ'):
    image_folder_tfrecord.convert_image_folder_to_tfrecords(
      other_dir, str(tmp_path / 'out' / 'other'), show_progress=False
    )


def test_make_classification_example_is_what_the_decoder_reads():
  buffer = io.BytesIO()
  Image.new('RGB', (3, 2)).save(buffer, format='PNG')
  example = image_folder_tfrecord.make_classification_example(
    encoded_image=buffer.getvalue(), image_format='png', height=2, width=3, label=7
  )
  decoded = mg_classification_input.Decoder().decode(example.SerializeToString())
  assert int(decoded['image/class/label']) == 7
  assert decoded['image/encoded'].numpy() == buffer.getvalue()
  with pytest.raises(ValueError, match='0-based'):
    image_folder_tfrecord.make_classification_example(
      encoded_image=b'', image_format='png', height=1, width=1, label=-1
    )


@pytest.mark.slow
def test_binary(tmp_path):
  image_dir, bad, _ = _folder_with_bad_file(tmp_path)
  prefix = str(tmp_path / 'records' / 'train')
  args = [f'--image_dir={image_dir}', f'--output_prefix={prefix}', '--num_shards=2']
  failed = binaries.run_binary('create_classification_tfrecord', *args, '--num_workers=2')
  assert failed.returncode != 0
  assert f'{bad} is not a readable image' in failed.stderr
  result = binaries.run_binary('create_classification_tfrecord', *args, '--skip_unreadable')
  assert result.returncode == 0, result.stderr
  assert 'Wrote 4 images of 2 classes' in result.stdout
  assert '2 unreadable files skipped' in result.stdout
  assert len(glob.glob(f'{prefix}-*-of-00002.tfrecord')) == 2
  assert os.path.exists(tmp_path / 'records' / 'labels.txt')

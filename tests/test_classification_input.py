"""Tests for the classification input pipeline (data/classification_input.py)."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from official_spinenet.data import classification_input
from official_spinenet.data import image_folder_tfrecord
from official_spinenet.data import tfexample
from tests import classification_fixtures

# ImageNet mean / stddev of tf-models-official's preprocess_ops, in 0..255 units.
MEAN_RGB = np.array([0.485, 0.456, 0.406]) * 255
STDDEV_RGB = np.array([0.229, 0.224, 0.225]) * 255


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  """3 classes x 3 images (JPEG and PNG, 48 x 48), one shard; returns the summary."""
  root = tmp_path_factory.mktemp('classification_input')
  image_dir = classification_fixtures.make_image_folder(
    str(root / 'images'), num_classes=3, images_per_class=3, size=48
  )
  return image_folder_tfrecord.convert_image_folder_to_tfrecords(
    image_dir, str(root / 'records' / 'train'), num_shards=1, show_progress=False
  )


def _dataset(pattern, is_training, **kwargs):
  args = dict(global_batch_size=4, image_size=(32, 40), num_classes=3, seed=0)
  args.update(kwargs)
  return classification_input.build_classification_dataset(pattern, is_training, **args)


def test_training_batches(records):
  images, labels = next(iter(_dataset(records.tfrecord_pattern, True)))
  assert images.shape == (4, 32, 40, 3) and images.dtype == tf.float32
  assert labels.shape == (4,) and labels.dtype == tf.int32
  assert set(labels.numpy()) <= {0, 1, 2}
  # Normalised: roughly zero-mean, unit-scale values, not 0..255 pixels.
  assert -3 < float(tf.reduce_min(images)) and float(tf.reduce_max(images)) < 3


def test_training_repeats_and_drops_the_remainder(records):
  batches = list(_dataset(records.tfrecord_pattern, True).take(5))
  assert all(images.shape[0] == 4 for images, _ in batches)


def test_eval_batches_are_the_eval_preprocessing_in_order(records):
  batches = list(_dataset(records.tfrecord_pattern, False))
  # 9 records: two full batches and a partial one, read once, in file order.
  assert [int(labels.shape[0]) for _, labels in batches] == [4, 4, 1]
  images = np.concatenate([i.numpy() for i, _ in batches])
  labels = np.concatenate([label.numpy() for _, label in batches])
  for i, serialized in enumerate(tf.data.TFRecordDataset(records.tfrecord_files)):
    example = tf.train.Example.FromString(serialized.numpy())
    feature = example.features.feature
    assert labels[i] == feature['image/class/label'].int64_list.value[0]
    decoded = tf.io.decode_image(feature['image/encoded'].bytes_list.value[0], channels=3)
    expected = classification_input.preprocess_eval_image(decoded, (32, 40))
    np.testing.assert_allclose(images[i], expected.numpy(), atol=1e-6)


def test_preprocess_eval_image_crops_the_centre_and_normalises():
  # A 64 x 64 image: the centre crop is 87.5% of it (56 px); the border outside
  # it is white and must not reach the 8 x 8 output.
  image = np.full([64, 64, 3], 255, np.uint8)
  image[4:60, 4:60] = [10, 120, 200]
  output = classification_input.preprocess_eval_image(tf.constant(image), (8, 8))
  assert output.shape == (8, 8, 3) and output.dtype == tf.float32
  expected = (np.array([10, 120, 200]) - MEAN_RGB) / STDDEV_RGB
  np.testing.assert_allclose(output.numpy(), np.broadcast_to(expected, (8, 8, 3)), atol=1e-5)
  bfloat16 = classification_input.preprocess_eval_image(tf.constant(image), (8, 8), 'bfloat16')
  assert bfloat16.dtype == tf.bfloat16


def test_bfloat16_images(records):
  images, _ = next(iter(_dataset(records.tfrecord_pattern, True, dtype='bfloat16')))
  assert images.dtype == tf.bfloat16


def _write_records(path, labels, encoded=None):
  buffer = io.BytesIO()
  Image.new('L', (10, 12), 100).save(buffer, format='PNG')  # grey PNG: 1 channel
  with tfexample.ShardedTFRecordWriter(path, 1) as writer:
    for label in labels:
      writer.write(
        image_folder_tfrecord.make_classification_example(
          encoded_image=encoded or buffer.getvalue(),
          image_format='png',
          height=12,
          width=10,
          label=label,
        )
      )
  return writer.paths[0]


def test_grey_png_and_a_label_outside_the_classes(tmp_path):
  path = _write_records(str(tmp_path / 'data'), [0, 1, 5])
  dataset = _dataset(path, False, global_batch_size=2)
  images, labels = next(iter(dataset))
  assert images.shape == (2, 32, 40, 3)
  np.testing.assert_array_equal(labels.numpy(), [0, 1])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'label 5 outside \[0, num_classes=3\)'):
    list(dataset)


def test_no_files(tmp_path):
  with pytest.raises(ValueError, match='No files match'):
    _dataset(str(tmp_path / 'none-*'), True)


def test_skip_corrupt_records(tmp_path):
  good = _write_records(str(tmp_path / 'good'), [0, 2])
  bad = _write_records(str(tmp_path / 'bad'), [1], encoded=b'\x89PNG\r\n\x1a\n not a png')
  pattern = f'{good},{bad}'
  with pytest.raises(tf.errors.InvalidArgumentError):
    list(_dataset(pattern, False))
  batches = list(_dataset(pattern, False, skip_corrupt_records=True))
  labels = np.concatenate([label.numpy() for _, label in batches])
  np.testing.assert_array_equal(sorted(labels), [0, 2])

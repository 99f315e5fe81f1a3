"""Tests for the synthetic shapes classification dataset (the classification demo's data)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.data import classification_input
from official_spinenet.data import shapes_classification

_SIZE = 32
_NUM_TRAIN, _NUM_VAL = 30, 12


def _ensure(data_dir, seed=3, **kwargs):
  options = dict(num_train=_NUM_TRAIN, num_val=_NUM_VAL, image_size=_SIZE, seed=seed)
  options.update(kwargs)
  return shapes_classification.ensure_shapes_classification_dataset(str(data_dir), **options)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return _ensure(tmp_path_factory.mktemp('shapes_classification'))


def _records(file_pattern):
  """(image [H, W, 3] uint8, label, class text) of every record, in file order."""
  out = []
  for path in sorted(tf.io.gfile.glob(file_pattern)):
    for record in tf.data.TFRecordDataset(path):
      example = tf.train.Example.FromString(record.numpy())
      feature = example.features.feature
      image = tf.io.decode_png(feature['image/encoded'].bytes_list.value[0]).numpy()
      assert feature['image/format'].bytes_list.value == [b'png']
      text = feature['image/class/text'].bytes_list.value[0].decode()
      out.append((image, feature['image/class/label'].int64_list.value[0], text))
  return out


def _file_bytes(paths):
  return [tf.io.gfile.GFile(p, 'rb').read() for p in paths]


def test_classes_are_kind_times_colour():
  assert shapes_classification.NUM_CLASSES == 12
  names = shapes_classification.CLASS_NAMES
  assert names[:4] == ('red_circle', 'red_square', 'red_triangle', 'red_cross')
  assert names[-1] == 'blue_cross'
  assert len(set(names)) == 12


def test_layout_labels_file_and_records(dataset):
  assert set(dataset) == {'train', 'validation', 'class_names_file', 'num_classes'}
  assert dataset['num_classes'] == 12
  with open(dataset['class_names_file']) as f:
    assert f.read().splitlines() == list(shapes_classification.CLASS_NAMES)
  for split, count in (('train', _NUM_TRAIN), ('validation', _NUM_VAL)):
    info = dataset[split]
    assert [os.path.basename(p) for p in info['files']] == [
      f'{split}-00000-of-00002.tfrecord',
      f'{split}-00001-of-00002.tfrecord',
    ]
    assert sorted(tf.io.gfile.glob(info['file_pattern'])) == info['files']
    records = _records(info['file_pattern'])
    assert len(records) == info['num_images'] == count
    for image, label, text in records:
      assert image.shape == (_SIZE, _SIZE, 3) and image.dtype == np.uint8
      assert text == shapes_classification.CLASS_NAMES[label]
    counts = np.bincount([label for _, label, _ in records], minlength=12)
    assert counts.tolist() == info['class_counts']


def test_classes_are_balanced(dataset):
  # 30 images: every class twice, then 6 classes a third time; 12: each once.
  assert sorted(dataset['train']['class_counts']) == [2] * 6 + [3] * 6
  assert dataset['validation']['class_counts'] == [1] * 12
  labels = [shapes_classification.image_label(0, 'train', i) for i in range(1200)]
  assert np.bincount(labels).tolist() == [100] * 12
  # Not a fixed cycle: the order inside each block of 12 is drawn.
  assert labels[:12] != labels[12:24]


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, dataset):
  again = _ensure(tmp_path / 'again')
  for split in ('train', 'validation'):
    assert _file_bytes(again[split]['files']) == _file_bytes(dataset[split]['files'])
  other = _ensure(tmp_path / 'other', seed=4)
  assert _file_bytes(other['train']['files']) != _file_bytes(dataset['train']['files'])


def test_image_depends_only_on_seed_split_and_index():
  image, label = shapes_classification.render_split_image(3, 'train', 7, _SIZE)
  again, label_again = shapes_classification.render_split_image(3, 'train', 7, _SIZE)
  np.testing.assert_array_equal(image, again)
  assert label == label_again
  held_out, _ = shapes_classification.render_split_image(3, 'validation', 7, _SIZE)
  assert not np.array_equal(image, held_out)


def test_images_vary_and_show_their_class_colour():
  images = [shapes_classification.render_split_image(0, 'train', i, 64) for i in range(48)]
  pixels = np.stack([image for image, _ in images]).astype(np.float32)
  # Backgrounds, clutter and noise differ: no two images alike, none flat.
  assert min(image.std() for image, _ in images) > 10
  assert np.abs(pixels[1:] - pixels[:-1]).mean() > 30
  for image, label in images:
    colour_index = label // len(shapes_classification.KINDS)
    hsv = tf.image.rgb_to_hsv(image.astype(np.float32) / 255).numpy().reshape(-1, 3)
    hue = shapes_classification.COLOURS[colour_index][1]
    distance = np.abs((hsv[:, 0] - hue + 0.5) % 1.0 - 0.5)
    near = (distance < 0.08) & (hsv[:, 1] > 0.45) & (hsv[:, 2] > 0.4)
    # The main shape covers at least ~5% of the image (0.6 x its smallest area).
    assert near.mean() > 0.05, (label, near.mean())


def test_finished_copy_is_reused_and_other_settings_rewrite(tmp_path, monkeypatch):
  first = _ensure(tmp_path, num_train=12, num_val=12)
  marker = os.path.join(tmp_path, shapes_classification.DATASET_MARKER)
  written = []
  real_write_split = shapes_classification.write_split
  monkeypatch.setattr(
    shapes_classification,
    'write_split',
    lambda *args, **kwargs: written.append(args[1]) or real_write_split(*args, **kwargs),
  )
  assert _ensure(tmp_path, num_train=12, num_val=12) == first
  assert not written
  _ensure(tmp_path, num_train=24, num_val=12)
  assert written == ['train', 'validation']
  # An interrupted run leaves no marker: everything is written again.
  os.remove(marker)
  written.clear()
  _ensure(tmp_path, num_train=24, num_val=12)
  assert written == ['train', 'validation'] and os.path.exists(marker)
  assert not [name for name in os.listdir(tmp_path / 'tfrecords') if 'tmp' in name]


def test_records_feed_the_classification_pipeline(dataset):
  images, labels = next(
    iter(
      classification_input.build_classification_dataset(
        dataset['validation']['file_pattern'],
        is_training=False,
        global_batch_size=_NUM_VAL,
        image_size=(_SIZE, _SIZE),
        num_classes=dataset['num_classes'],
      )
    )
  )
  assert images.shape == (_NUM_VAL, _SIZE, _SIZE, 3)
  expected = [label for _, label, _ in _records(dataset['validation']['file_pattern'])]
  assert sorted(labels.numpy().tolist()) == sorted(expected)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(num_train=0), 'num_train >= 1'),
    (dict(num_val=0), 'num_val >= 1'),
    (dict(image_size=8), 'at least 16'),
  ],
)
def test_bad_settings_are_errors(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _ensure(tmp_path, **kwargs)
  assert not os.listdir(tmp_path)


def test_bad_label_is_an_error():
  with pytest.raises(ValueError, match=r'label must be in \[0, 12\)'):
    shapes_classification.render_classification_image(np.random.default_rng(0), 12, 32)

"""Tests for the synthetic shapes dataset."""

import glob
import json
import os

import numpy as np
from official.vision.dataloaders import tf_example_decoder
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import mask as mask_utils
import pytest
import tensorflow as tf

from official_spinenet.data import shapes
from official_spinenet.utils import image_sizes
from tests import binaries

# pycocotools' decoder warns about numpy 2's copy keyword on every call.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

_SIZE = 64
_NUM_TRAIN, _NUM_VAL = 12, 5


def _make(output_dir, seed, **kwargs):
  options = dict(
    num_train=_NUM_TRAIN,
    num_val=_NUM_VAL,
    image_size=_SIZE,
    seed=seed,
    num_shards=2,
    show_progress=False,
  )
  options.update(kwargs)
  return shapes.make_shapes_dataset(str(output_dir), **options)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return _make(tmp_path_factory.mktemp('shapes'), seed=3)


def _read_bytes(path):
  with open(path, 'rb') as f:
    return f.read()


def _pixels(image_dir):
  return [np.asarray(Image.open(p)) for p in sorted(glob.glob(os.path.join(image_dir, '*.png')))]


def test_layout_and_counts(dataset):
  assert set(dataset) == {'train', 'val'}
  for split, num_images in (('train', _NUM_TRAIN), ('val', _NUM_VAL)):
    paths = dataset[split]
    assert paths['num_images'] == num_images
    assert len(glob.glob(os.path.join(paths['image_dir'], '*.png'))) == (num_images)
    assert [os.path.basename(p) for p in paths['tfrecord_files']] == [
      f'{split}-00000-of-00002.tfrecord',
      f'{split}-00001-of-00002.tfrecord',
    ]
    assert sorted(glob.glob(paths['tfrecord_pattern'])) == paths['tfrecord_files']
    num_records = sum(1 for _ in tf.data.TFRecordDataset(paths['tfrecord_files']))
    assert num_records == num_images


def test_same_seed_is_byte_identical_other_seed_differs(dataset, tmp_path):
  again = _make(tmp_path / 'again', seed=3)
  other = _make(tmp_path / 'other', seed=4, num_val=0)
  assert set(other) == {'train'}
  for split in ('train', 'val'):
    assert _read_bytes(again[split]['annotation_file']) == _read_bytes(
      dataset[split]['annotation_file']
    )
    for a, b in zip(_pixels(again[split]['image_dir']), _pixels(dataset[split]['image_dir'])):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(again[split]['tfrecord_files'], dataset[split]['tfrecord_files']):
      assert _read_bytes(a) == _read_bytes(b)
  assert _read_bytes(other['train']['annotation_file']) != _read_bytes(
    dataset['train']['annotation_file']
  )
  different = [
    not np.array_equal(a, b)
    for a, b in zip(_pixels(other['train']['image_dir']), _pixels(dataset['train']['image_dir']))
  ]
  assert all(different)
  # Train and val are different streams of the same seed.
  assert not np.array_equal(
    _pixels(dataset['train']['image_dir'])[0], _pixels(dataset['val']['image_dir'])[0]
  )


def test_image_depends_only_on_its_index(dataset, tmp_path):
  fewer = shapes.write_shapes_split(
    str(tmp_path), 'train', 3, _SIZE, _SIZE, seed=3, show_progress=False
  )
  for a, b in zip(_pixels(fewer['image_dir']), _pixels(dataset['train']['image_dir'])[:3]):
    np.testing.assert_array_equal(a, b)


def test_json_is_valid_coco_with_tight_boxes(dataset):
  for split in ('train', 'val'):
    coco = coco_api.COCO(dataset[split]['annotation_file'])
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == [
      'circle',
      'square',
      'triangle',
      'cross',
    ]
    assert len(coco.getImgIds()) == dataset[split]['num_images']
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == dataset[split]['num_objects']
    assert len(anns) >= dataset[split]['num_images']  # at least 1 per image
    for image_id in coco.getImgIds():
      image_anns = coco.imgToAnns[image_id]
      assert 1 <= len(image_anns) <= 4
      union = np.zeros((_SIZE, _SIZE), np.int32)
      for ann in image_anns:
        mask = coco.annToMask(ann)
        rows, cols = np.nonzero(mask)
        assert rows.size == ann['area'] > 0
        x, y, w, h = ann['bbox']
        assert [x, y, w, h] == [
          cols.min(),
          rows.min(),
          cols.max() + 1 - cols.min(),
          rows.max() + 1 - rows.min(),
        ]
        assert 0 <= x and 0 <= y and x + w <= _SIZE and y + h <= _SIZE
        assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= 4
        union += mask
      # Visible masks never overlap: occlusion was applied.
      assert union.max() == 1


def test_some_shapes_overlap(dataset):
  """Objects are not all isolated: some boxes intersect (crowding/occlusion)."""
  with open(dataset['train']['annotation_file']) as f:
    data = json.load(f)
  boxes_overlap = 0
  by_image = {}
  for ann in data['annotations']:
    by_image.setdefault(ann['image_id'], []).append(ann['bbox'])
  for boxes in by_image.values():
    for i, (x0, y0, w0, h0) in enumerate(boxes):
      for x1, y1, w1, h1 in boxes[i + 1 :]:
        if x0 < x1 + w1 and x1 < x0 + w0 and y0 < y1 + h1 and y1 < y0 + h0:
          boxes_overlap += 1
  assert boxes_overlap > 0


def test_tfrecords_match_json_through_tf_example_decoder(dataset):
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  for split in ('train', 'val'):
    coco = coco_api.COCO(dataset[split]['annotation_file'])
    seen = set()
    for raw in tf.data.TFRecordDataset(dataset[split]['tfrecord_files']):
      decoded = {k: v.numpy() for k, v in decoder.decode(raw).items()}
      image_id = int(decoded['source_id'])
      seen.add(image_id)
      info = coco.imgs[image_id]
      png = np.asarray(Image.open(os.path.join(dataset[split]['image_dir'], info['file_name'])))
      np.testing.assert_array_equal(decoded['image'], png)
      anns = coco.imgToAnns[image_id]
      expected = np.array(
        [
          [y / _SIZE, x / _SIZE, (y + h) / _SIZE, (x + w) / _SIZE]
          for x, y, w, h in (a['bbox'] for a in anns)
        ],
        np.float32,
      )
      np.testing.assert_allclose(decoded['groundtruth_boxes'], expected, atol=1e-7)
      np.testing.assert_array_equal(
        decoded['groundtruth_classes'], [a['category_id'] for a in anns]
      )
      assert not decoded['groundtruth_is_crowd'].any()
      np.testing.assert_array_equal(
        decoded['groundtruth_instance_masks'],
        np.stack([mask_utils.decode(a['segmentation']) for a in anns]),
      )
    assert seen == set(coco.getImgIds())


def test_render_shapes_image_contract():
  image, masks, classes = shapes.render_shapes_image(
    np.random.default_rng(0), height=48, width=80, max_objects=4
  )
  assert image.shape == (48, 80, 3) and image.dtype == np.uint8
  assert masks.shape[1:] == (48, 80) and masks.dtype == bool
  assert len(classes) == len(masks) >= 1
  assert all(m.any() for m in masks)
  assert masks.sum(axis=0).max() == 1
  # Even tiny images get at least one object (small shapes must not block
  # every later placement).
  for seed in range(40):
    _, masks, _ = shapes.render_shapes_image(np.random.default_rng(seed), 16, 16)
    assert 1 <= len(masks) <= 4 and all(m.any() for m in masks)
  # Every class is drawn, and shapes of one size differ in area by class.
  areas = [
    shapes.shape_mask(c, 40, 40, 40, 0.3, 80, 80).sum() for c in range(1, shapes.NUM_CATEGORIES + 1)
  ]
  assert len(set(areas)) == shapes.NUM_CATEGORIES and min(areas) > 200
  # A circle's area is close to pi r^2.
  assert abs(areas[0] - np.pi * 20**2) < 0.02 * np.pi * 20**2


def test_invalid_arguments(tmp_path):
  with pytest.raises(ValueError, match='num_train'):
    shapes.make_shapes_dataset(str(tmp_path), num_train=0)
  with pytest.raises(ValueError, match='image_size'):
    shapes.make_shapes_dataset(str(tmp_path), image_size=8)
  with pytest.raises(ValueError, match='size_range'):
    shapes.render_shapes_image(np.random.default_rng(0), 32, 32, size_range=(10, 40))
  with pytest.raises(ValueError, match='category'):
    shapes.shape_mask(5, 10, 10, 10, 0.0, 20, 20)
  with pytest.raises(ValueError, match='split'):
    shapes.write_shapes_split(str(tmp_path), 'test', 1)


def test_ensure_reuses_a_finished_dataset_and_remakes_on_other_settings(tmp_path, monkeypatch):
  first = shapes.ensure_shapes_dataset(str(tmp_path), num_train=2, num_val=1, image_size=32)
  assert os.path.exists(os.path.join(tmp_path, shapes.DATASET_MARKER))
  calls = []
  make = shapes.make_shapes_dataset
  monkeypatch.setattr(
    shapes,
    'make_shapes_dataset',
    lambda *args, **kwargs: calls.append(kwargs) or make(*args, **kwargs),
  )
  # Same settings: the marker's paths, nothing written.
  assert shapes.ensure_shapes_dataset(str(tmp_path), 2, 1, image_size=32) == first
  assert not calls
  # Another size (or count, or seed): written afresh.
  again = shapes.ensure_shapes_dataset(str(tmp_path), 2, 1, image_size=(32, 48))
  assert len(calls) == 1 and again['val']['num_images'] == 1
  coco = coco_api.COCO(again['val']['annotation_file'])
  assert {(i['height'], i['width']) for i in coco.imgs.values()} == {(32, 48)}


@pytest.mark.parametrize(
  'value,expected',
  [
    (128, (128, 128)),
    ('96', (96, 96)),
    ('48,64', (48, 64)),
    ((48, 64), (48, 64)),
    (['48', '64'], (48, 64)),
    (np.int64(32), (32, 32)),
  ],
)
def test_parse_image_size(value, expected):
  assert image_sizes.parse_image_size(value) == expected


@pytest.mark.parametrize('value', ['a', [1, 2, 3], 0, 1.5, None, True, '', '-3'])
def test_parse_image_size_errors_name_the_setting(value):
  with pytest.raises(ValueError, match='--image_size must be one positive int'):
    image_sizes.parse_image_size(value, '--image_size')


def test_make_shapes_binary(tmp_path):
  result = binaries.run_binary(
    'make_shapes',
    f'--output_dir={tmp_path}',
    '--num_train=3',
    '--num_val=2',
    '--image_size=48,64',
    '--seed=1',
    '--num_shards=1',
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  paths = json.loads(result.stdout)
  coco = coco_api.COCO(paths['val']['annotation_file'])
  assert len(coco.getImgIds()) == 2
  assert {(i['height'], i['width']) for i in coco.imgs.values()} == {(48, 64)}
  assert [os.path.basename(p) for p in paths['train']['tfrecord_files']] == [
    'train-00000-of-00001.tfrecord'
  ]

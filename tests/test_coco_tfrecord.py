"""Tests for the COCO -> TFRecord converter and the tf.Example helpers.

The records are read back with tf-models-official's TfExampleDecoder, the
decoder our input pipelines use, and compared with what pycocotools makes of
the same JSON.
"""

import glob
import io
import json
import os

import numpy as np
from official.vision.dataloaders import tf_example_decoder
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import mask as mask_utils
import pytest
import tensorflow as tf

from official_spinenet.data import coco_tfrecord
from official_spinenet.data import tfexample
from tests import binaries

# pycocotools' decoder warns about numpy 2's copy keyword on every call.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


def _uncompressed_rle(mask):
  """COCO crowd-style RLE: column-major run lengths starting with zeros."""
  flat = mask.flatten(order='F').astype(np.uint8)
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat[0] == 1:
    counts = [0] + counts
  return {'size': list(mask.shape), 'counts': counts}


def _random_image(height, width, channels, seed):
  rng = np.random.default_rng(seed)
  shape = (height, width) if channels == 1 else (height, width, channels)
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _save(array, path, fmt, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  image.save(path, format=fmt)


def _write_json(data, path):
  with open(path, 'w') as f:
    json.dump(data, f)


@pytest.fixture
def tiny_coco(tmp_path):
  """Three images (RGB JPEG, RGBA PNG in a subfolder, grey JPEG, no objects).

  Annotations cover polygons, a crowd uncompressed RLE, a compressed RLE, a
  box overshooting the image by half a pixel (clipped), and a zero-width box
  (left out). Category ids 1 and 90 show that COCO ids are kept.
  """
  image_dir = str(tmp_path / 'images')
  _save(_random_image(30, 40, 3, 0), os.path.join(image_dir, 'a.jpg'), 'JPEG')
  _save(_random_image(24, 32, 4, 1), os.path.join(image_dir, 'sub', 'b.png'), 'PNG')
  _save(_random_image(20, 20, 1, 2), os.path.join(image_dir, 'c.jpg'), 'JPEG')

  crowd_mask = np.zeros((30, 40), np.uint8)
  crowd_mask[10:20, 20:40] = 1
  rle_mask = np.zeros((24, 32), np.uint8)
  rle_mask[2:9, 4:20] = 1
  rle_mask[5:7, 10:12] = 0  # a hole, which only RLE can express
  compressed = mask_utils.encode(np.asfortranarray(rle_mask))
  compressed['counts'] = compressed['counts'].decode('ascii')

  data = {
    'images': [
      {'id': 11, 'file_name': 'a.jpg', 'height': 30, 'width': 40},
      {'id': 12, 'file_name': 'sub/b.png', 'height': 24, 'width': 32},
      {'id': 13, 'file_name': 'c.jpg', 'height': 20, 'width': 20},
    ],
    'annotations': [
      {
        'id': 1,
        'image_id': 11,
        'category_id': 1,
        'iscrowd': 0,
        'bbox': [5, 5, 10, 10],
        'area': 100.0,
        'segmentation': [[5, 5, 15, 5, 15, 15, 5, 15]],
      },
      {
        'id': 2,
        'image_id': 11,
        'category_id': 90,
        'iscrowd': 1,
        'bbox': [20, 10, 20, 10],
        'area': 200.0,
        'segmentation': _uncompressed_rle(crowd_mask),
      },
      {
        'id': 3,
        'image_id': 11,
        'category_id': 1,
        'iscrowd': 0,
        'bbox': [30, -0.5, 10.5, 5.5],
        'area': 50.0,
        'segmentation': [[30, 0, 40, 0, 40, 5, 30, 5]],
      },
      {
        'id': 4,
        'image_id': 12,
        'category_id': 90,
        'iscrowd': 0,
        'bbox': [4, 2, 16, 7],
        'area': float(rle_mask.sum()),
        'segmentation': compressed,
      },
      {
        'id': 5,
        'image_id': 12,
        'category_id': 1,
        'iscrowd': 0,
        'bbox': [3, 3, 0, 4],
        'area': 0.0,
        'segmentation': [[3, 3, 3, 3, 3, 7]],
      },
    ],
    'categories': [{'id': 1, 'name': 'person'}, {'id': 90, 'name': 'toothbrush'}],
  }
  annotation_file = str(tmp_path / 'instances.json')
  _write_json(data, annotation_file)
  return image_dir, annotation_file, data


def _decode_all(files):
  """Decodes every record with tf-models-official's decoder, in file order."""
  decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
  records = []
  for raw in tf.data.TFRecordDataset(sorted(files)):
    decoded = decoder.decode(raw)
    example = tf.train.Example.FromString(raw.numpy())
    records.append(({k: v.numpy() for k, v in decoded.items()}, example))
  return records


def test_roundtrip_through_tf_example_decoder(tiny_coco, tmp_path):
  image_dir, annotation_file, data = tiny_coco
  prefix = str(tmp_path / 'out' / 'coco')
  summary = coco_tfrecord.convert_coco_to_tfrecords(
    image_dir, annotation_file, prefix, num_shards=2, include_masks=True, show_progress=False
  )

  assert summary.tfrecord_files == [
    prefix + '-00000-of-00002.tfrecord',
    prefix + '-00001-of-00002.tfrecord',
  ]
  assert sorted(glob.glob(summary.tfrecord_pattern)) == summary.tfrecord_files
  assert (summary.num_images, summary.num_objects) == (3, 4)
  assert summary.num_skipped_annotations == 1  # the zero-width box
  assert summary.num_reencoded_images == 1  # the RGBA PNG

  coco = coco_api.COCO(annotation_file)
  records = _decode_all(summary.tfrecord_files)
  assert sorted(int(r['source_id']) for r, _ in records) == [11, 12, 13]
  for decoded, example in records:
    image_id = int(decoded['source_id'])
    info = coco.imgs[image_id]
    height, width = info['height'], info['width']
    assert (decoded['height'], decoded['width']) == (height, width)
    # Pixels are the file's (PIL and TF decode these losslessly-equal).
    expected_pixels = np.asarray(
      Image.open(os.path.join(image_dir, info['file_name'])).convert('RGB')
    )
    if info['file_name'].endswith('.png'):
      np.testing.assert_array_equal(decoded['image'], expected_pixels)
    else:
      assert decoded['image'].shape == expected_pixels.shape
      assert np.abs(decoded['image'].astype(int) - expected_pixels.astype(int)).mean() < 2.0

    anns = [a for a in coco.imgToAnns[image_id] if a['bbox'][2] > 0]
    expected_boxes = np.array(
      [
        [
          max(a['bbox'][1], 0) / height,
          max(a['bbox'][0], 0) / width,
          min(a['bbox'][1] + a['bbox'][3], height) / height,
          min(a['bbox'][0] + a['bbox'][2], width) / width,
        ]
        for a in anns
      ],
      np.float32,
    ).reshape(-1, 4)
    np.testing.assert_allclose(decoded['groundtruth_boxes'], expected_boxes, atol=1e-7)
    np.testing.assert_array_equal(decoded['groundtruth_classes'], [a['category_id'] for a in anns])
    np.testing.assert_array_equal(
      decoded['groundtruth_is_crowd'], [bool(a['iscrowd']) for a in anns]
    )
    np.testing.assert_allclose(decoded['groundtruth_area'], [a['area'] for a in anns])
    masks = decoded['groundtruth_instance_masks']
    assert masks.shape == (len(anns), height, width)
    for mask, ann in zip(masks, anns):
      np.testing.assert_array_equal(mask, coco.annToMask(ann))
    texts = example.features.feature['image/object/class/text'].bytes_list.value
    assert [t.decode() for t in texts] == [coco.cats[a['category_id']]['name'] for a in anns]

  by_id = {int(r['source_id']): r for r, _ in records}
  # The half-pixel overshoot of annotation 3 is clipped to the image.
  np.testing.assert_allclose(
    by_id[11]['groundtruth_boxes'][2], [0.0, 0.75, 5.0 / 30, 1.0], atol=1e-7
  )
  # The compressed-RLE mask keeps its hole.
  assert by_id[12]['groundtruth_instance_masks'][0][5:7, 10:12].sum() == 0
  assert by_id[13]['groundtruth_boxes'].shape == (0, 4)


def test_without_masks_and_max_images(tiny_coco, tmp_path):
  image_dir, annotation_file, _ = tiny_coco
  summary = coco_tfrecord.convert_coco_to_tfrecords(
    image_dir,
    annotation_file,
    str(tmp_path / 'nomask'),
    num_shards=1,
    max_images=2,
    show_progress=False,
  )
  assert summary.num_images == 2
  records = list(tf.data.TFRecordDataset(summary.tfrecord_files))
  assert len(records) == 2
  example = tf.train.Example.FromString(records[0].numpy())
  assert 'image/object/mask' not in example.features.feature
  assert example.features.feature['image/format'].bytes_list.value == [b'jpeg']


def _assert_conversion_fails(image_dir, annotation_file, tmp_path, *patterns, include_masks=True):
  prefix = str(tmp_path / 'fail' / 'coco')
  with pytest.raises(ValueError) as info:
    coco_tfrecord.convert_coco_to_tfrecords(
      image_dir,
      annotation_file,
      prefix,
      num_shards=2,
      include_masks=include_masks,
      show_progress=False,
    )
  for pattern in patterns:
    assert pattern in str(info.value), (pattern, str(info.value))
  # Nothing half-written is left behind, under final or temporary names.
  leftovers = glob.glob(prefix + '*')
  assert not leftovers, leftovers
  return str(info.value)


def test_missing_image_file(tiny_coco, tmp_path):
  image_dir, annotation_file, _ = tiny_coco
  os.remove(os.path.join(image_dir, 'sub', 'b.png'))
  _assert_conversion_fails(
    image_dir, annotation_file, tmp_path, 'image id 12', 'b.png', 'does not exist'
  )


def test_undecodable_images(tiny_coco, tmp_path):
  image_dir, annotation_file, _ = tiny_coco
  with open(os.path.join(image_dir, 'c.jpg'), 'wb') as f:
    f.write(b'this is not an image')
  _assert_conversion_fails(
    image_dir, annotation_file, tmp_path, 'image id 13', 'c.jpg', 'does not decode'
  )
  # A truncated JPEG passes a header check; only a full decode catches it.
  path = os.path.join(image_dir, 'a.jpg')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) // 2])
  _assert_conversion_fails(
    image_dir, annotation_file, tmp_path, 'image id 11', 'a.jpg', 'does not decode'
  )


def test_image_size_mismatch(tiny_coco, tmp_path):
  image_dir, annotation_file, data = tiny_coco
  data['images'][0]['width'] = 41
  _write_json(data, annotation_file)
  _assert_conversion_fails(
    image_dir, annotation_file, tmp_path, 'image id 11', '40x30', 'annotation file says'
  )


def test_bad_json(tiny_coco, tmp_path):
  image_dir, annotation_file, _ = tiny_coco
  with open(annotation_file, 'r+') as f:
    text = f.read()
    f.seek(0)
    f.write(text[:-20])
    f.truncate()
  _assert_conversion_fails(image_dir, annotation_file, tmp_path, annotation_file, 'not valid JSON')
  _assert_conversion_fails(
    image_dir, str(tmp_path / 'nope.json'), tmp_path, 'nope.json', 'does not exist'
  )


@pytest.mark.parametrize(
  'mutate, patterns',
  [
    (lambda d: d.pop('images'), ['"images"']),
    (lambda d: d.pop('categories'), ['"categories"']),
    (lambda d: d['images'][1].pop('height'), ["'height'"]),
    (lambda d: d['annotations'][3].pop('bbox'), ['annotation 4', "'bbox'"]),
    (lambda d: d['annotations'][3].pop('segmentation'), ['annotation 4', "'segmentation'"]),
    (lambda d: d['annotations'][0].update(image_id=99), ['annotation id 1', 'image id 99']),
    (lambda d: d['annotations'][0].update(category_id=7), ['annotation id 1', 'category id 7']),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, 3]), ['annotation id 1', 'bbox']),
    (lambda d: d['categories'][0].update(id=0), ['category id 0', 'background']),
    (lambda d: d['images'][1].update(id=11), ['image id 11', 'twice']),
  ],
)
def test_malformed_json_entries(tiny_coco, tmp_path, mutate, patterns):
  image_dir, annotation_file, data = tiny_coco
  mutate(data)
  _write_json(data, annotation_file)
  _assert_conversion_fails(image_dir, annotation_file, tmp_path, annotation_file, *patterns)


def test_box_outside_image(tiny_coco, tmp_path):
  image_dir, annotation_file, data = tiny_coco
  # 1.5 pixels past the right edge: beyond the 1-pixel tolerance.
  data['annotations'][2]['bbox'] = [30, 0, 11.5, 5]
  _write_json(data, annotation_file)
  _assert_conversion_fails(
    image_dir, annotation_file, tmp_path, 'annotation id 3', 'image id 11', 'outside'
  )


def test_bad_segmentation(tiny_coco, tmp_path):
  image_dir, annotation_file, data = tiny_coco
  data['annotations'][0]['segmentation'] = [[1, 2, 3]]
  _write_json(data, annotation_file)
  _assert_conversion_fails(image_dir, annotation_file, tmp_path, 'annotation id 1', 'segmentation')
  # Without masks the segmentation is not read, so the same file converts.
  coco_tfrecord.convert_coco_to_tfrecords(
    image_dir, annotation_file, str(tmp_path / 'ok'), num_shards=1, show_progress=False
  )


def test_coco_box_to_normalized_tolerance():
  np.testing.assert_allclose(
    coco_tfrecord.coco_box_to_normalized([-1.0, 2, 11, 8], 10, 10), [0.2, 0.0, 1.0, 1.0]
  )
  assert coco_tfrecord.coco_box_to_normalized([3, 3, 0, 4], 10, 10) is None
  with pytest.raises(ValueError, match='outside'):
    coco_tfrecord.coco_box_to_normalized([-1.5, 0, 5, 5], 10, 10)
  with pytest.raises(ValueError, match='negative'):
    coco_tfrecord.coco_box_to_normalized([1, 1, -2, 5], 10, 10)


def test_sharded_writer_is_atomic_and_round_robin(tmp_path):
  prefix = str(tmp_path / 'deep' / 'dir' / 'data')
  writer = tfexample.ShardedTFRecordWriter(prefix, 3)
  for i in range(7):
    writer.write(str(i).encode())
  assert not any(os.path.exists(p) for p in writer.paths)  # not yet visible
  paths = writer.close()
  assert [os.path.basename(p) for p in paths] == [
    'data-00000-of-00003.tfrecord',
    'data-00001-of-00003.tfrecord',
    'data-00002-of-00003.tfrecord',
  ]
  assert sorted(os.listdir(os.path.dirname(prefix))) == sorted(os.path.basename(p) for p in paths)
  contents = [[r.numpy().decode() for r in tf.data.TFRecordDataset(p)] for p in paths]
  assert contents == [['0', '3', '6'], ['1', '4'], ['2', '5']]

  with pytest.raises(RuntimeError):
    with tfexample.ShardedTFRecordWriter(str(tmp_path / 'boom'), 2) as w:
      w.write(b'x')
      raise RuntimeError('interrupted')
  assert not glob.glob(str(tmp_path / 'boom*'))
  with pytest.raises(ValueError, match='num_shards'):
    tfexample.ShardedTFRecordWriter(prefix, 0)


def test_make_detection_example_validates():
  png = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format='PNG')
  kwargs = dict(
    encoded_image=png.getvalue(), image_format='png', height=4, width=4, source_id=1, classes=[1]
  )
  with pytest.raises(ValueError, match='normalised'):
    tfexample.make_detection_example(boxes=[[0, 0, 2, 2]], **kwargs)
  with pytest.raises(ValueError, match='ymin <= ymax'):
    tfexample.make_detection_example(boxes=[[0.5, 0, 0.2, 1]], **kwargs)
  with pytest.raises(ValueError, match='2 boxes'):
    tfexample.make_detection_example(boxes=[[0, 0, 1, 1], [0, 0, 0.5, 0.5]], **kwargs)
  with pytest.raises(ValueError, match='mask'):
    tfexample.make_detection_example(boxes=[[0, 0, 1, 1]], masks=np.zeros((1, 3, 4)), **kwargs)
  example = tfexample.make_detection_example(
    boxes=[[0, 0, 1, 0.5]], masks=np.ones((1, 4, 4)), **kwargs
  )
  decoded = tf_example_decoder.TfExampleDecoder(include_mask=True).decode(
    example.SerializeToString()
  )
  # Default area is the box area in pixels; masks are stored as {0, 1}.
  np.testing.assert_allclose(decoded['groundtruth_area'].numpy(), [8.0])
  np.testing.assert_array_equal(decoded['groundtruth_instance_masks'].numpy(), np.ones((1, 4, 4)))


def test_create_coco_tfrecord_binary(tiny_coco, tmp_path):
  image_dir, annotation_file, _ = tiny_coco
  prefix = str(tmp_path / 'cli' / 'train')
  result = binaries.run_binary(
    'create_coco_tfrecord',
    f'--image_dir={image_dir}',
    f'--annotation_file={annotation_file}',
    f'--output_prefix={prefix}',
    '--num_shards=2',
    '--include_masks',
    '--max_images=2',
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  files = sorted(glob.glob(prefix + '-*-of-00002.tfrecord'))
  assert len(files) == 2
  records = _decode_all(files)
  assert sorted(int(r['source_id']) for r, _ in records) == [11, 12]
  assert sum(len(r['groundtruth_classes']) for r, _ in records) == 4
  assert 'Wrote 2 images, 4 objects' in result.stdout

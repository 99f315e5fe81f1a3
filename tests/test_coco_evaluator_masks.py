"""COCOEvaluator's instance-mask (segm) evaluation against pycocotools called by hand."""

import copy
import json

import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_api
import pytest

from official_spinenet import model_garden
from official_spinenet.data import shapes
from official_spinenet.evaluation import coco_evaluator
from official_spinenet.evaluation import instance_masks

CATEGORY_NAMES = {c['id']: c['name'] for c in shapes.CATEGORIES}


def _image_info(height, width, scale=1.0, offset=(0.0, 0.0)):
  """[4, 2] labels['image_info'] of one image: the parser's resize then crop."""
  return np.array(
    [[height, width], [height * scale, width * scale], [scale, scale], list(offset)], np.float32
  )


def _load(path):
  with open(path) as f:
    return json.load(f)


def _write_json(data, path):
  with open(path, 'w') as f:
    json.dump(data, f)
  return path


def _whole_image_batch(coco, masks_of, scale=0.75):
  """Detections whose box is the whole image and whose crop mask is a full-size mask.

  With the 'exact' paste a mask over the whole image pastes back unchanged, so
  the evaluator scores exactly the masks given.

  Args:
    coco: the COCO instances dict.
    masks_of: annotation -> [H, W] mask to detect.
    scale: the resize scale of the (simulated) parser.

  Returns:
    (detections, image_info [B, 4, 2], source_ids [B], results) where results
    are the same detections as COCO segm results for pycocotools.
  """
  images = coco['images']
  per_image = [[a for a in coco['annotations'] if a['image_id'] == i['id']] for i in images]
  size = max(len(p) for p in per_image)
  height, width = images[0]['height'], images[0]['width']
  masks = np.zeros([len(images), size, height, width], np.float32)
  scores = np.zeros([len(images), size], np.float32)
  classes = np.zeros([len(images), size], np.int32)
  results = []
  for b, annotations in enumerate(per_image):
    for k, annotation in enumerate(annotations):
      masks[b, k] = masks_of(annotation)
      scores[b, k] = 0.9 - 0.1 * k
      classes[b, k] = annotation['category_id']
      rle = mask_api.encode(np.asfortranarray(masks[b, k] > 0.5, dtype=np.uint8))
      results.append(
        {
          'image_id': annotation['image_id'],
          'category_id': int(classes[b, k]),
          'score': float(scores[b, k]),
          'segmentation': rle,
        }
      )
  detections = {
    'detection_boxes': np.tile(
      np.array([0, 0, height, width], np.float32) * scale, [b + 1, size, 1]
    ),
    'detection_scores': scores,
    'detection_classes': classes,
    'num_detections': np.array([len(p) for p in per_image], np.int32),
    'detection_masks': masks,
  }
  image_info = np.stack([_image_info(i['height'], i['width'], scale) for i in images])
  return detections, image_info, np.array([i['id'] for i in images]), results


def _pycocotools_segm_stats(coco_gt, results, category_ids=None):
  """COCOeval.stats of segm results, pycocotools called directly."""
  # loadRes adds keys to the dicts it gets (a 'bbox' it then reads back).
  results = copy.deepcopy(results)
  evaluation = cocoeval.COCOeval(coco_gt, coco_gt.loadRes(results), iouType='segm')
  evaluation.params.imgIds = sorted(coco_gt.getImgIds())
  if category_ids is not None:
    evaluation.params.catIds = category_ids
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  return list(evaluation.stats)


def _decode(segmentation):
  return mask_api.decode(segmentation)


def _shifted_or_eroded(annotation):
  """The ground truth mask moved 2 px right (odd classes) or eroded by 1 px (even)."""
  mask = _decode(annotation['segmentation']).astype(bool)
  if annotation['category_id'] % 2:
    return np.roll(mask, 2, axis=1)
  inner = mask.copy()
  inner[1:] &= mask[:-1]
  inner[:-1] &= mask[1:]
  inner[:, 1:] &= mask[:, :-1]
  inner[:, :-1] &= mask[:, 1:]
  return inner


def test_perfect_masks_give_mask_ap_one(shapes_data):
  annotation_file = shapes_data['val']['annotation_file']
  coco = _load(annotation_file)
  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True, mask_paste='exact')
  detections, image_info, source_ids, _ = _whole_image_batch(
    coco, lambda a: _decode(a['segmentation'])
  )
  evaluator.update(detections, image_info, source_ids)
  metrics = evaluator.result()
  for key in ('mask_AP', 'mask_AP50', 'mask_AP75', 'mask_ARmax100'):
    assert metrics[key] == pytest.approx(1.0, abs=1e-12), key
  present = {a['category_id'] for a in coco['annotations']}
  for category_id, name in CATEGORY_NAMES.items():
    expected = 1.0 if category_id in present else coco_evaluator.UNDEFINED
    assert metrics[f'mask_AP/{name}'] == pytest.approx(expected, abs=1e-12), name
  # Box metrics keep their names (whole-image boxes: a poor box AP).
  assert metrics['AP'] < 0.5
  assert set(coco_evaluator.METRIC_NAMES) <= set(metrics)
  assert metrics['num_detections'] == len(coco['annotations'])


def test_imperfect_masks_match_pycocotools(shapes_data):
  annotation_file = shapes_data['val']['annotation_file']
  coco = _load(annotation_file)
  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True, mask_paste='exact')
  detections, image_info, source_ids, results = _whole_image_batch(coco, _shifted_or_eroded)
  # Two updates of two images each.
  for part in (slice(0, 2), slice(2, None)):
    evaluator.update(
      {k: v[part] for k, v in detections.items()}, image_info[part], source_ids[part]
    )
  metrics = evaluator.result()
  coco_gt = coco_lib.COCO(annotation_file)
  stats = _pycocotools_segm_stats(coco_gt, results)
  assert [metrics['mask_' + k] for k in coco_evaluator.METRIC_NAMES] == stats
  assert 0.0 < metrics['mask_AP'] < 0.9
  for category_id in sorted({a['category_id'] for a in coco['annotations']}):
    by_hand = _pycocotools_segm_stats(coco_lib.COCO(annotation_file), results, [category_id])
    assert metrics[f'mask_AP/{CATEGORY_NAMES[category_id]}'] == by_hand[0]


@pytest.mark.parametrize('method', instance_masks.PASTE_METHODS)
def test_pasting_matches_model_garden(tmp_path, method):
  # Original 100x200 image, resized by 0.5 and cropped at (2, 4).
  rle = instance_masks.encode_rle(np.ones([100, 200], np.uint8))
  path = _write_json(
    {
      'images': [{'id': 7, 'height': 100, 'width': 200}],
      'annotations': [
        {
          'id': 1,
          'image_id': 7,
          'category_id': 1,
          'bbox': [0, 0, 200, 100],
          'area': 20000,
          'iscrowd': 0,
          'segmentation': rle,
        }
      ],
      'categories': [{'id': 1, 'name': 'thing'}],
    },
    str(tmp_path / 'one_image.json'),
  )
  rng = np.random.default_rng(0)
  # Model-input boxes (y1, x1, y2, x2): random ones of every size, some past the
  # image's edges, then hand-picked ones; the last has no area.
  corners = rng.uniform([-5, -5], [52, 102], size=[40, 2, 2])  # y, x
  boxes = np.concatenate(
    [
      np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=-1),
      [[10, 20, 30, 40], [5, 10, 25, 50], [0, 0, 47.5, 95.3], [3, 3, 3, 9]],
    ]
  )[None]
  num_boxes = boxes.shape[1]
  masks = rng.uniform(size=[1, num_boxes, 14, 20]).astype(np.float32)
  evaluator = coco_evaluator.COCOEvaluator(path, include_mask=True, mask_paste=method)
  evaluator.update(
    {
      'detection_boxes': boxes,
      'detection_scores': rng.uniform(size=[1, num_boxes]),
      'detection_classes': np.ones([1, num_boxes]),
      'num_detections': np.array([num_boxes]),
      'detection_masks': masks,
    },
    _image_info(100, 200, scale=0.5, offset=(2, 4))[None],
    np.array([7]),
  )
  results = evaluator.detections_json()
  # By hand: original = (input + offset) / scale, clipped; Model Garden pastes x, y, w, h.
  y1, x1, y2, x2 = np.moveaxis(boxes[0] + [2, 4, 2, 4], -1, 0) / 0.5
  y1, y2 = np.clip(y1, 0, 100), np.clip(y2, 0, 100)
  x1, x2 = np.clip(x1, 0, 200), np.clip(x2, 0, 200)
  xywh = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
  mask_ops = model_garden.load('mask_ops')
  paste = {'detectron': mask_ops.paste_instance_masks, 'exact': mask_ops.paste_instance_masks_v2}
  assert len(results) == num_boxes
  for k, result in enumerate(results[:-1]):
    assert result['segmentation']['size'] == [100, 200]
    assert isinstance(result['segmentation']['counts'], str)
    if xywh[k, 2] > 0 and xywh[k, 3] > 0:
      expected = paste[method](masks[0, k : k + 1], xywh[k : k + 1], 100, 200)[0]
    else:  # outside the image: Model Garden's 'exact' paste fails on it
      expected = np.zeros([100, 200])
    np.testing.assert_array_equal(_decode(result['segmentation']), expected > 0, err_msg=str(k))
  assert mask_api.area(results[-1]['segmentation']) == 0


def test_all_ones_mask_covers_the_box_exactly(tmp_path):
  path = _write_json(
    {
      'images': [{'id': 3, 'height': 100, 'width': 200}],
      'annotations': [],
      'categories': [{'id': 1, 'name': 'thing'}],
    },
    str(tmp_path / 'empty.json'),
  )
  evaluator = coco_evaluator.COCOEvaluator(path, include_mask=True, mask_paste='exact')
  detections = {
    'detection_boxes': np.array([[[10, 20, 30, 40], [5, 10, 25, 50]]], np.float32),
    'detection_scores': np.array([[0.9, 0.8]]),
    'detection_classes': np.ones([1, 2]),
    'num_detections': np.array([2]),
    'detection_masks': np.ones([1, 2, 28, 28], np.float32),
  }
  evaluator.update(detections, _image_info(100, 200, scale=0.5, offset=(2, 4))[None], [3])
  results = evaluator.detections_json()
  # Original boxes (x, y, w, h): [48, 24, 40, 40] and [28, 14, 80, 40].
  for result, box in zip(results, ([48, 24, 40, 40], [28, 14, 80, 40])):
    np.testing.assert_allclose(result['bbox'], box, atol=1e-5)
    assert mask_api.area(result['segmentation']) == box[2] * box[3]
    np.testing.assert_array_equal(mask_api.toBbox(result['segmentation']), box)
  # Detectron's paste counts corners as pixels: it covers the box and a border.
  evaluator = coco_evaluator.COCOEvaluator(path, include_mask=True)
  evaluator.update(detections, _image_info(100, 200, scale=0.5, offset=(2, 4))[None], [3])
  for result in evaluator.detections_json():
    x, y, w, h = (int(round(v)) for v in result['bbox'])
    mask = _decode(result['segmentation'])
    assert mask[y : y + h, x : x + w].all()
    assert w * h < mask.sum() <= (w + 2) * (h + 2)
  # Masks over outer boxes (Model Garden's outer_boxes_scale > 1) are pasted there.
  evaluator = coco_evaluator.COCOEvaluator(path, include_mask=True, mask_paste='exact')
  outer = detections['detection_boxes'] + np.array([-1, -2, 1, 2], np.float32)
  evaluator.update(
    dict(detections, detection_outer_boxes=outer),
    _image_info(100, 200, scale=0.5, offset=(2, 4))[None],
    [3],
  )
  for result, box in zip(evaluator.detections_json(), ([48, 24, 40, 40], [28, 14, 80, 40])):
    np.testing.assert_allclose(result['bbox'], box, atol=1e-5)
    np.testing.assert_array_equal(
      mask_api.toBbox(result['segmentation']), [box[0] - 4, box[1] - 2, box[2] + 8, box[3] + 4]
    )


def test_groundtruth_from_tfrecords_equals_annotation_json(shapes_data):
  split = shapes_data['val']
  expected = _load(split['annotation_file'])
  scanned = instance_masks.groundtruth_from_tfrecords(
    split['tfrecord_pattern'], include_mask=True, category_names=CATEGORY_NAMES
  )
  by_id = {i['id']: i for i in expected['images']}
  assert sorted(i['id'] for i in scanned['images']) == sorted(by_id)
  for image in scanned['images']:
    assert image == {k: by_id[image['id']][k] for k in ('id', 'height', 'width')}
  assert scanned['categories'] == [{'id': c['id'], 'name': c['name']} for c in shapes.CATEGORIES]
  assert len(scanned['annotations']) == len(expected['annotations'])
  assert [a['id'] for a in scanned['annotations']] == list(
    range(1, 1 + len(expected['annotations']))
  )

  def key(annotation):
    return annotation['image_id'], annotation['category_id'], tuple(annotation['bbox'])

  for got, want in zip(
    sorted(scanned['annotations'], key=key), sorted(expected['annotations'], key=key)
  ):
    assert (got['image_id'], got['category_id'], got['iscrowd']) == (
      want['image_id'],
      want['category_id'],
      want['iscrowd'],
    )
    np.testing.assert_allclose(got['bbox'], want['bbox'], atol=1e-4)
    assert got['area'] == want['area']
    assert isinstance(got['segmentation']['counts'], str)
    np.testing.assert_array_equal(_decode(got['segmentation']), _decode(want['segmentation']))
  # Boxes only: no segmentation.
  boxes_only = instance_masks.groundtruth_from_tfrecords(split['tfrecord_pattern'], False)
  assert not [a for a in boxes_only['annotations'] if 'segmentation' in a]
  assert [c['name'] for c in boxes_only['categories']][:1] == ['class_1']


def test_from_tfrecords_gives_the_annotation_files_metrics(shapes_data):
  split = shapes_data['val']
  coco = _load(split['annotation_file'])
  from_file = coco_evaluator.COCOEvaluator(split['annotation_file'], include_mask=True)
  from_records = coco_evaluator.COCOEvaluator.from_tfrecords(
    split['tfrecord_pattern'], category_names=CATEGORY_NAMES, include_mask=True
  )
  batch = _whole_image_batch(coco, _shifted_or_eroded, scale=1.0)[:3]
  from_file.update(*batch)
  from_records.update(*batch)
  expected, actual = from_file.result(), from_records.result()
  assert sorted(expected) == sorted(actual)
  assert 'mask_AP/circle' in actual
  for key in expected:
    assert actual[key] == pytest.approx(expected[key], abs=1e-9), key


def test_box_metrics_unchanged_by_include_mask(shapes_data):
  annotation_file = shapes_data['val']['annotation_file']
  coco = _load(annotation_file)
  batch = _whole_image_batch(coco, _shifted_or_eroded)[:3]
  boxes_only = coco_evaluator.COCOEvaluator(annotation_file)
  boxes_only.update(*batch)
  with_masks = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True)
  with_masks.update(*batch)
  box_metrics, all_metrics = boxes_only.result(), with_masks.result()
  assert not [k for k in box_metrics if k.startswith('mask_')]
  assert {k: v for k, v in all_metrics.items() if not k.startswith('mask_')} == box_metrics
  assert sorted(k[len('mask_') :] for k in all_metrics if k.startswith('mask_')) == sorted(
    k for k in box_metrics if not k.startswith('num_')
  )
  assert 'segmentation' not in boxes_only.detections_json()[0]


def test_zero_detections(shapes_data):
  annotation_file = shapes_data['val']['annotation_file']
  detections, image_info, source_ids, _ = _whole_image_batch(
    _load(annotation_file), _shifted_or_eroded
  )
  detections['num_detections'][:] = 0
  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True)
  evaluator.update(detections, image_info, source_ids)
  metrics = evaluator.result()
  for key in ('AP', 'AP50', 'ARmax100', 'APs', 'APm'):
    assert metrics[key] == metrics['mask_' + key] == 0.0, key
  assert metrics['mask_APl'] == coco_evaluator.UNDEFINED
  assert metrics['mask_AP/circle'] == 0.0
  assert evaluator.detections_json() == []


def test_detections_json_round_trip(shapes_data, tmp_path):
  annotation_file = shapes_data['val']['annotation_file']
  coco = _load(annotation_file)
  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True)
  detections, image_info, source_ids, _ = _whole_image_batch(coco, _shifted_or_eroded)
  detections['detection_masks'] = detections['detection_masks'][:, :, ::4, ::4]  # 32x32 crops
  evaluator.update(detections, image_info, source_ids)
  path = str(tmp_path / 'detections.json')
  evaluator.write_detections_json(path)
  written = evaluator.detections_json()
  assert _load(path) == written
  loaded = coco_lib.COCO(annotation_file).loadRes(path)
  assert len(loaded.anns) == len(written) == len(coco['annotations'])
  for annotation, result in zip(sorted(loaded.anns.values(), key=lambda a: a['id']), written):
    np.testing.assert_array_equal(
      _decode(annotation['segmentation']), _decode(result['segmentation'])
    )
    assert annotation['segmentation']['size'] == [128, 128]


def test_errors(shapes_data, tmp_path):
  split = shapes_data['val']
  coco = _load(split['annotation_file'])
  detections, image_info, source_ids, _ = _whole_image_batch(coco, _shifted_or_eroded)
  evaluator = coco_evaluator.COCOEvaluator(split['annotation_file'], include_mask=True)
  bad = dict(detections, detection_masks=detections['detection_masks'][:, :1])
  with pytest.raises(ValueError, match=r'detection_masks .*\[4, \d+, \?, \?\]'):
    evaluator.update(bad, image_info, source_ids)
  bad = dict(detections, detection_masks=detections['detection_masks'][0])
  with pytest.raises(ValueError, match='detection_masks'):
    evaluator.update(bad, image_info, source_ids)
  bad = dict(detections, detection_outer_boxes=detections['detection_boxes'][:, :, :3])
  with pytest.raises(ValueError, match='detection_outer_boxes'):
    evaluator.update(bad, image_info, source_ids)
  no_masks = {k: v for k, v in detections.items() if k != 'detection_masks'}
  with pytest.raises(ValueError, match="lack 'detection_masks'"):
    evaluator.update(no_masks, image_info, source_ids)
  wrong_size = image_info.copy()
  wrong_size[1, 0] = [64, 128]
  with pytest.raises(ValueError, match=r'image_info gives image \d+ the size \(64, 128\)'):
    evaluator.update(detections, wrong_size, source_ids)
  evaluator.update(detections, image_info, source_ids)  # nothing was kept by the failures
  assert evaluator.result()['num_images'] == 4
  with pytest.raises(ValueError, match='annotation_file.*from_tfrecords'):
    coco_evaluator.COCOEvaluator(include_mask=True)
  with pytest.raises(ValueError, match='mask_paste'):
    coco_evaluator.COCOEvaluator(split['annotation_file'], include_mask=True, mask_paste='nearest')
  with pytest.raises(ValueError, match='not both'):
    coco_evaluator.COCOEvaluator(split['annotation_file'], groundtruth=coco)
  for annotation in coco['annotations'][:2]:
    del annotation['segmentation']
  unmasked = _write_json(coco, str(tmp_path / 'unmasked.json'))
  with pytest.raises(ValueError, match='unmasked.json.*without a segmentation'):
    coco_evaluator.COCOEvaluator(unmasked, include_mask=True)
  coco_evaluator.COCOEvaluator(unmasked)  # boxes only: fine
  with pytest.raises(ValueError, match='no_such'):
    coco_evaluator.COCOEvaluator.from_tfrecords(str(tmp_path / 'no_such-*'), include_mask=True)


def test_tfrecords_without_masks_name_the_file(tmp_path):
  data = shapes.make_shapes_dataset(
    str(tmp_path),
    num_train=1,
    num_val=1,
    image_size=64,
    num_shards=1,
    include_masks=False,
    show_progress=False,
  )
  pattern = data['val']['tfrecord_pattern']
  with pytest.raises(ValueError, match=r'val.*tfrecord.*image/object/mask'):
    instance_masks.groundtruth_from_tfrecords(pattern, include_mask=True)
  assert instance_masks.groundtruth_from_tfrecords(pattern, include_mask=False)['annotations']
  broken = tmp_path / 'broken.tfrecord'
  broken.write_bytes(b'not a tfrecord at all')
  with pytest.raises(ValueError, match='broken.tfrecord'):
    instance_masks.groundtruth_from_tfrecords(str(broken))

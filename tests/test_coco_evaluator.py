"""COCOEvaluator against pycocotools, on hand-made data and the shapes val split."""

import json
import os
import tempfile
import unittest

import numpy as np
from pycocotools import coco as coco_lib
from pycocotools import cocoeval

from official_spinenet.data import shapes
from official_spinenet.evaluation import coco_evaluator

SHAPE_NAMES = [c['name'] for c in shapes.CATEGORIES]


def _image_info(height, width, scale=1.0, offset=(0.0, 0.0)):
  """[4, 2] labels['image_info'] of one image: the parser's resize then crop."""
  return np.array(
    [[height, width], [height * scale, width * scale], [scale, scale], list(offset)], np.float32
  )


def _batch(annotations, images, scale=1.0, shift=0.0):
  """Detections equal to the ground truth (moved by `shift` px), in model-input pixels.

  Args:
    annotations: COCO annotation dicts.
    images: COCO image dicts, one per batch element.
    scale: the resize scale the parser applied.
    shift: pixels added to every box's y and x (original-image pixels).

  Returns:
    (detections, image_info [B, 4, 2], source_ids [B]).
  """
  per_image = [[a for a in annotations if a['image_id'] == image['id']] for image in images]
  size = max(1, max(len(p) for p in per_image))
  boxes = np.zeros([len(images), size, 4], np.float32)
  scores = np.zeros([len(images), size], np.float32)
  classes = np.zeros([len(images), size], np.int32)
  for b, anns in enumerate(per_image):
    for k, ann in enumerate(anns):
      x, y, w, h = ann['bbox']
      boxes[b, k] = np.array([y, x, y + h, x + w]) * scale + shift * scale
      scores[b, k] = 0.9 - 0.1 * k
      classes[b, k] = ann['category_id']
  detections = {
    'detection_boxes': boxes,
    'detection_scores': scores,
    'detection_classes': classes,
    'num_detections': np.array([len(p) for p in per_image], np.int32),
  }
  image_info = np.stack([_image_info(i['height'], i['width'], scale) for i in images])
  return detections, image_info, np.array([i['id'] for i in images], np.int64)


def _pycocotools_stats(annotation_file, results, image_ids, category_ids=None):
  """COCOeval.stats from calling pycocotools directly."""
  coco_gt = coco_lib.COCO(annotation_file)
  evaluation = cocoeval.COCOeval(coco_gt, coco_gt.loadRes(results), iouType='bbox')
  evaluation.params.imgIds = sorted(image_ids)
  if category_ids is not None:
    evaluation.params.catIds = category_ids
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  return evaluation.stats


class COCOEvaluatorTest(unittest.TestCase):
  @classmethod
  def setUpClass(cls):
    cls._tmp = tempfile.TemporaryDirectory()
    cls.data = shapes.make_shapes_dataset(
      cls._tmp.name,
      num_train=1,
      num_val=6,
      image_size=128,
      seed=0,
      num_shards=1,
      show_progress=False,
    )
    cls.annotation_file = cls.data['val']['annotation_file']
    with open(cls.annotation_file) as f:
      cls.coco = json.load(f)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()

  def _evaluate(self, images, evaluator=None, batch_size=4, **batch_kwargs):
    evaluator = evaluator or coco_evaluator.COCOEvaluator(self.annotation_file)
    for start in range(0, len(images), batch_size):
      evaluator.update(
        *_batch(self.coco['annotations'], images[start : start + batch_size], **batch_kwargs)
      )
    return evaluator, evaluator.result()

  def test_perfect_detections_give_ap_one(self):
    evaluator, metrics = self._evaluate(self.coco['images'])
    # 1 up to pycocotools' precision tp / (tp + fp + eps) (checked exactly below).
    for key in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'ARmax100'):
      self.assertAlmostEqual(metrics[key], 1.0, places=12, msg=key)
    # No shape is large (> 96^2 px) at 128 px: undefined, pycocotools' -1.
    self.assertEqual(metrics['APl'], -1.0)
    for name in SHAPE_NAMES:
      self.assertAlmostEqual(metrics[f'AP/{name}'], 1.0, places=12, msg=name)
    self.assertEqual(metrics['num_images'], 6)
    self.assertEqual(metrics['num_detections'], len(self.coco['annotations']))
    # Exactly what pycocotools gives for the same results.
    stats = _pycocotools_stats(
      self.annotation_file, evaluator.detections_json(), [i['id'] for i in self.coco['images']]
    )
    self.assertEqual([metrics[k] for k in coco_evaluator.METRIC_NAMES], list(stats))

  def test_shifted_boxes_lower_ap(self):
    _, metrics = self._evaluate(self.coco['images'], shift=3.0)
    self.assertLess(metrics['AP'], 0.9)
    self.assertGreater(metrics['AP'], 0.0)
    self.assertLess(metrics['AP75'], 1.0)

  def test_small_example_matches_pycocotools(self):
    coco = {
      'images': [{'id': 1, 'height': 100, 'width': 100}, {'id': 2, 'height': 200, 'width': 100}],
      'categories': [{'id': 1, 'name': 'cat'}, {'id': 2, 'name': 'dog'}, {'id': 3, 'name': 'bird'}],
      'annotations': [
        {
          'id': 1,
          'image_id': 1,
          'category_id': 1,
          'bbox': [10, 10, 30, 30],
          'area': 900,
          'iscrowd': 0,
        },
        {
          'id': 2,
          'image_id': 1,
          'category_id': 2,
          'bbox': [50, 50, 40, 40],
          'area': 1600,
          'iscrowd': 0,
        },
        {
          'id': 3,
          'image_id': 2,
          'category_id': 1,
          'bbox': [0, 0, 50, 50],
          'area': 2500,
          'iscrowd': 0,
        },
        {
          'id': 4,
          'image_id': 2,
          'category_id': 2,
          'bbox': [0, 100, 100, 100],
          'area': 10000,
          'iscrowd': 1,
        },
      ],
    }
    path = os.path.join(self._tmp.name, 'small.json')
    with open(path, 'w') as f:
      json.dump(coco, f)
    # y1, x1, y2, x2; cat: a false positive above two exact hits; dog: one
    # shifted hit, one detection inside the crowd box (ignored) .
    detections = {
      'detection_boxes': np.array(
        [
          [[10, 10, 40, 40], [60, 60, 90, 90], [55, 50, 95, 90], [0, 0, 0, 0]],
          [[0, 0, 50, 50], [120, 10, 190, 90], [0, 0, 0, 0], [0, 0, 0, 0]],
        ],
        np.float32,
      ),
      'detection_scores': np.array([[0.9, 0.95, 0.8, 0], [0.6, 0.5, 0, 0]], np.float32),
      'detection_classes': np.array([[1, 1, 2, 0], [1, 2, 0, 0]]),
      'num_detections': np.array([3, 2]),
    }
    image_info = np.stack([_image_info(100, 100), _image_info(200, 100)])
    evaluator = coco_evaluator.COCOEvaluator(path)
    evaluator.update(detections, image_info, np.array([1, 2]))
    metrics = evaluator.result()
    stats = _pycocotools_stats(path, evaluator.detections_json(), [1, 2])
    self.assertEqual([metrics[k] for k in coco_evaluator.METRIC_NAMES], list(stats))
    # Cat by hand: FP, TP, TP -> precision envelope 2/3 at every recall: AP 2/3.
    self.assertAlmostEqual(metrics['AP/cat'], 2 / 3, places=12)
    for category_id, name in ((1, 'cat'), (2, 'dog')):
      self.assertEqual(
        metrics[f'AP/{name}'],
        _pycocotools_stats(path, evaluator.detections_json(), [1, 2], [category_id])[0],
      )
    self.assertEqual(metrics['AP/bird'], coco_evaluator.UNDEFINED)
    self.assertEqual(metrics['num_detections'], 5)

  def test_per_class_keys_subset_and_no_per_class(self):
    image = min(
      self.coco['images'],
      key=lambda i: len(
        {a['category_id'] for a in self.coco['annotations'] if a['image_id'] == i['id']}
      ),
    )
    present = {a['category_id'] for a in self.coco['annotations'] if a['image_id'] == image['id']}
    self.assertLess(len(present), len(SHAPE_NAMES))
    _, metrics = self._evaluate([image])
    # Only the image given is evaluated: the others' objects are not misses.
    self.assertAlmostEqual(metrics['AP'], 1.0, places=12)
    self.assertEqual(metrics['num_images'], 1)
    for category in shapes.CATEGORIES:
      expected = 1.0 if category['id'] in present else coco_evaluator.UNDEFINED
      self.assertAlmostEqual(metrics[f"AP/{category['name']}"], expected, places=12, msg=category)
    evaluator = coco_evaluator.COCOEvaluator(self.annotation_file, per_category_metrics=False)
    _, metrics = self._evaluate([image], evaluator)
    self.assertFalse([k for k in metrics if k.startswith('AP/')])
    renamed = coco_evaluator.COCOEvaluator(
      self.annotation_file, category_names={c['id']: c['name'].upper() for c in shapes.CATEGORIES}
    )
    _, metrics = self._evaluate([image], renamed)
    self.assertIn('AP/CIRCLE', metrics)

  def test_zero_detections(self):
    detections, image_info, source_ids = _batch(self.coco['annotations'], self.coco['images'])
    detections['num_detections'][:] = 0
    evaluator = coco_evaluator.COCOEvaluator(self.annotation_file)
    evaluator.update(detections, image_info, source_ids)
    metrics = evaluator.result()
    for key in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'ARmax1', 'ARmax100', 'ARs', 'ARm'):
      self.assertEqual(metrics[key], 0.0, key)
    self.assertEqual(metrics['APl'], -1.0)
    for name in SHAPE_NAMES:
      self.assertEqual(metrics[f'AP/{name}'], 0.0)
    self.assertEqual(metrics['num_detections'], 0)
    self.assertEqual(evaluator.detections_json(), [])

  def test_scale_and_offset_are_undone(self):
    # Original 100x200 image, resized by 0.5 and cropped at (2, 4): a model-input
    # box b maps back to (b + offset) / scale, clipped to the original image.
    image_info = _image_info(100, 200, scale=0.5, offset=(2, 4))[None]
    boxes = np.array([[[10, 20, 30, 40], [40, 90, 60, 120], [1, 1, 2, 2]]], np.float32)
    expected = [[24, 48, 64, 88], [84, 188, 100, 200]]
    mapped = coco_evaluator.original_image_boxes(boxes, image_info)[0, :2]
    np.testing.assert_allclose(mapped, expected)
    path = os.path.join(self._tmp.name, 'one_image.json')
    with open(path, 'w') as f:
      json.dump(
        {
          'images': [{'id': 7, 'height': 100, 'width': 200}],
          'annotations': [],
          'categories': [{'id': 1, 'name': 'thing'}],
        },
        f,
      )
    evaluator = coco_evaluator.COCOEvaluator(path)
    evaluator.update(
      {
        'detection_boxes': boxes,
        'detection_scores': np.array([[0.9, 0.8, 0.7]]),
        'detection_classes': np.array([[1, 1, 1]]),
        'num_detections': np.array([2]),
      },
      image_info,
      np.array([7]),
    )
    results = evaluator.detections_json()
    self.assertEqual([r['image_id'] for r in results], [7, 7])
    np.testing.assert_allclose(
      [r['bbox'] for r in results], [[48, 24, 40, 40], [188, 84, 12, 16]], atol=1e-5
    )
    np.testing.assert_allclose([r['score'] for r in results], [0.9, 0.8], atol=1e-6)

  def test_groundtruths_dicts_match_annotation_file(self):
    # The val split through Model Garden's eval parser at 96 px (scale 0.75).
    from official_spinenet.data import retinanet_input  # pylint: disable=g-import-not-at-top

    dataset = retinanet_input.build_retinanet_dataset(
      self.data['val']['tfrecord_pattern'],
      is_training=False,
      global_batch_size=4,
      image_size=(96, 96),
      min_level=3,
      max_level=5,
    )
    from_file = coco_evaluator.COCOEvaluator(self.annotation_file)
    from_labels = coco_evaluator.COCOEvaluator(
      category_names={c['id']: c['name'] for c in shapes.CATEGORIES}
    )
    perfect = coco_evaluator.COCOEvaluator(self.annotation_file)
    rng = np.random.default_rng(0)
    for _, labels in dataset:
      gt = labels['groundtruths']
      info = labels['image_info'].numpy()
      scale = np.tile(info[:, 2], [1, 2])[:, None]
      boxes = gt['boxes'].numpy() * scale  # original -> model-input pixels (offset 0)
      detections = {
        'detection_boxes': boxes,
        'detection_scores': rng.uniform(size=boxes.shape[:2]),
        'detection_classes': gt['classes'],
        'num_detections': gt['num_detections'][:, 0],
      }
      perfect.update(detections, labels['image_info'], gt['source_id'])
      # Noisy detections: moved boxes, some wrong classes.
      detections['detection_boxes'] = boxes + rng.uniform(-4, 4, size=boxes.shape)
      detections['detection_classes'] = np.where(
        rng.uniform(size=boxes.shape[:2]) < 0.2, 1, gt['classes']
      )
      from_file.update(detections, labels['image_info'], gt['source_id'])
      from_labels.update(detections, labels['image_info'], gt['source_id'], gt)
    self.assertAlmostEqual(perfect.result()['AP'], 1.0, places=12)
    expected, actual = from_file.result(), from_labels.result()
    self.assertEqual(sorted(expected), sorted(actual))
    self.assertEqual(expected['num_images'], 6)
    self.assertLess(expected['AP'], 0.95)
    for key in expected:
      self.assertAlmostEqual(expected[key], actual[key], places=6, msg=key)

  def test_write_json_is_atomic(self):
    evaluator, metrics = self._evaluate(self.coco['images'][:2])
    directory = os.path.join(self._tmp.name, 'model_dir', 'eval')
    path = os.path.join(directory, 'metrics.json')
    self.assertEqual(evaluator.write_json(path), metrics)
    with open(path) as f:
      self.assertEqual(json.load(f), metrics)
    # A failed write (json cannot encode a value) leaves the last file intact.
    with self.assertRaises(TypeError):
      evaluator.write_json(path, {'AP': object()})
    with open(path) as f:
      self.assertEqual(json.load(f), metrics)
    self.assertEqual(os.listdir(directory), ['metrics.json'])
    # Non-finite values become null (valid JSON).
    evaluator.write_json(path, {'AP': float('nan')})
    with open(path) as f:
      self.assertEqual(json.load(f), {'AP': None})
    results = os.path.join(directory, 'detections.json')
    evaluator.write_detections_json(results)
    loaded = coco_lib.COCO(self.annotation_file).loadRes(results)
    self.assertEqual(len(loaded.anns), metrics['num_detections'])

  def test_errors(self):
    missing = os.path.join(self._tmp.name, 'no_such.json')
    with self.assertRaisesRegex(ValueError, 'no_such.json.*does not exist'):
      coco_evaluator.COCOEvaluator(missing)
    broken = os.path.join(self._tmp.name, 'broken.json')
    with open(broken, 'w') as f:
      f.write('{"images": [')
    with self.assertRaisesRegex(ValueError, 'broken.json.*not a COCO instances JSON'):
      coco_evaluator.COCOEvaluator(broken)
    evaluator = coco_evaluator.COCOEvaluator(self.annotation_file)
    with self.assertRaisesRegex(ValueError, 'update'):
      evaluator.result()
    detections, image_info, source_ids = _batch(self.coco['annotations'], self.coco['images'][:2])
    bad = dict(detections, detection_boxes=detections['detection_boxes'][..., :3])
    with self.assertRaisesRegex(ValueError, r'detection_boxes .*\[2, \d+, 3\]'):
      evaluator.update(bad, image_info, source_ids)
    with self.assertRaisesRegex(ValueError, r'image_info .*\[2, 3, 2\]'):
      evaluator.update(detections, image_info[:, :3], source_ids)
    with self.assertRaisesRegex(ValueError, r'num_detections .*\[3\]'):
      evaluator.update(dict(detections, num_detections=np.zeros(3)), image_info, source_ids)
    with self.assertRaisesRegex(ValueError, "12345.*not in the annotation file"):
      evaluator.update(detections, image_info, np.array([1, 12345]))
    evaluator.update(detections, image_info, source_ids)
    with self.assertRaisesRegex(ValueError, 'twice'):
      evaluator.update(detections, image_info, source_ids)
    with self.assertRaisesRegex(ValueError, 'groundtruths'):
      coco_evaluator.COCOEvaluator().update(detections, image_info, source_ids)


if __name__ == '__main__':
  unittest.main()

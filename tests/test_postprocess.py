"""generate_detections_fast gives Model Garden v1's detections (tiny inputs)."""

import ast
import math
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.ops import postprocess
from official_spinenet.utils import timing
from official_spinenet.workflows import postprocess_benchmark

IMAGE_SIZE = 128
NUM_CLASSES = 5
BATCH = 2
DETECTION_FIELDS = ('detection_boxes', 'detection_scores', 'detection_classes')


def _logit(p):
  return math.log(p / (1.0 - p))


def _v1(outputs, anchors, image_shape, **settings):
  """Model Garden's v1, in a graph as it is normally run (and comparable bit for bit)."""
  return tf.function(
    lambda: retinanet_model.generate_detections(
      outputs, anchors, image_shape, nms_version='v1', **settings
    )
  )()


def _fast(outputs, anchors, image_shape, **settings):
  return postprocess.generate_detections_fast(outputs, anchors, image_shape, **settings)


def _model_outputs(seed=0):
  """Outputs of a tiny random RetinaNet whose scores and boxes vary over anchors.

  A fresh head's predictor kernels have stddev 1e-5 (every anchor scores the
  same); they are redrawn and scaled to logits of stddev 2 and box deltas of
  stddev 0.2, as a trained model's.
  """
  tf_keras.utils.set_random_seed(seed)
  backbone = factory.build_backbone(
    'spinenet',
    '49',
    input_specs=[None, IMAGE_SIZE, IMAGE_SIZE, 3],
    filter_size_scale=0.25,
    endpoints_num_filters=32,
  )
  head = retinanet_head.RetinaNetHead(num_classes=NUM_CLASSES, num_convs=1, num_filters=32)
  model = retinanet_model.RetinaNetModel(backbone=backbone, head=head)
  images = tf.random.uniform([BATCH, IMAGE_SIZE, IMAGE_SIZE, 3], -1.0, 1.0, seed=seed)
  model(images)
  predictors = ((head._classifier, 'cls_outputs', 2.0), (head._box_regressor, 'box_outputs', 0.2))  # pylint: disable=protected-access
  for layer, _, _ in predictors:
    layer.kernel.assign(tf.random.normal(layer.kernel.shape, seed=seed))
    layer.bias.assign(tf.zeros_like(layer.bias))
  outputs = model(images)
  for layer, key, stddev in predictors:
    measured = np.std(np.concatenate([v.numpy().ravel() for v in outputs[key].values()]))
    layer.kernel.assign(layer.kernel * (stddev / measured))
  return model, images, model(images), model.anchor_boxes((IMAGE_SIZE, IMAGE_SIZE))


def _crafted(boxes, logits):
  """Outputs that decode to `boxes` exactly: one level, anchors = boxes, zero deltas.

  Args:
    boxes: [B, K, 4] y1, x1, y2, x2.
    logits: [B, K, C] class logits (background column 0 included).

  Returns:
    (outputs, anchors) for generate_detections.
  """
  boxes = np.asarray(boxes, np.float32)
  logits = np.asarray(logits, np.float32)
  outputs = {
    'cls_outputs': {'3': tf.constant(logits[:, None])},
    'box_outputs': {'3': tf.zeros(boxes[:, None].shape)},
  }
  return outputs, {'3': tf.constant(boxes[:, None])}


def _one_hot_logits(classes, scores, num_classes=NUM_CLASSES):
  """[B, K, C] logits: box k of image b scores scores[b][k] for classes[b][k] only."""
  logits = np.full(np.shape(classes) + (num_classes,), -20.0, np.float32)
  for b, row in enumerate(classes):
    for k, c in enumerate(row):
      logits[b, k, c] = _logit(scores[b][k])
  return logits


class GenerateDetectionsFastTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.images, cls.outputs, cls.anchors = _model_outputs()
    # Images of different sizes: boxes get clipped differently.
    cls.image_shape = tf.constant([[128.0, 128.0], [100.0, 120.0]])

  def assertSameDetections(self, expected, actual):
    """Equal counts, scores and classes, close boxes, in order, for the valid entries.

    Scores are bitwise equal (the same sigmoid of the same logits). Boxes may
    differ by an ulp or two (rtol 1e-6) where the two graphs differ around the
    decoding (grappler fuses its multiply-adds or not).
    """
    self.assertAllEqual(expected['num_detections'], actual['num_detections'])
    for b, count in enumerate(expected['num_detections'].numpy()):
      for key in ('detection_scores', 'detection_classes'):
        self.assertAllEqual(
          expected[key][b, :count], actual[key][b, :count], msg=f'{key}, image {b}'
        )
      self.assertAllClose(
        expected['detection_boxes'][b, :count],
        actual['detection_boxes'][b, :count],
        rtol=1e-6,
        atol=1e-5,
        msg=f'detection_boxes, image {b}',
      )

  def _biased(self, bias):
    return {
      'cls_outputs': {k: v + bias for k, v in self.outputs['cls_outputs'].items()},
      'box_outputs': self.outputs['box_outputs'],
    }

  def _num_candidates(self, outputs, threshold=0.05):
    """[B, C - 1] anchors per image and class scoring above the threshold."""
    counts = [
      np.sum(tf.sigmoid(tf.reshape(v, [BATCH, -1, NUM_CLASSES]))[..., 1:] > threshold, axis=1)
      for v in outputs['cls_outputs'].values()
    ]
    return np.sum(counts, axis=0)

  def test_matches_v1_on_model_outputs(self):
    outputs = self._biased(-7.0)
    candidates = self._num_candidates(outputs).sum(axis=1)
    self.assertTrue(np.all((candidates > 100) & (candidates < 3000)), candidates)
    expected = _v1(outputs, self.anchors, self.image_shape)
    actual = _fast(outputs, self.anchors, self.image_shape)
    self.assertTrue(np.all(actual['num_detections'].numpy() > 20), actual['num_detections'])
    self.assertSameDetections(expected, actual)
    # The benchmark's other two ways of calling ours: eagerly, and as our exports
    # run it from a SavedModel.
    eager = self.model.detections_from_outputs(outputs, self.images, self.image_shape)
    self.assertSameDetections(expected, eager)
    setup = postprocess_benchmark.Setup(self.model, None, self.images, None, self.anchors, 128)
    with tempfile.TemporaryDirectory() as export_dir:
      saved = postprocess_benchmark.saved_post_processing(setup, outputs, export_dir)
      self.assertSameDetections(expected, saved(outputs, self.image_shape))
    self.assertEqual(actual['detection_classes'].dtype, tf.int32)
    self.assertEqual(actual['num_detections'].dtype, tf.int32)
    self.assertEqual(actual['detection_boxes'].shape, (BATCH, 100, 4))
    # Also with batched anchors (as labels['anchor_boxes'] carries them), then
    # unbatched ones again with another batch size: each call traces anew
    # (a shape-generalised trace once lost the anchors' rank here).
    batched = retinanet_model.multilevel_anchor_boxes(
      (IMAGE_SIZE, IMAGE_SIZE), 3, 7, batch_size=BATCH
    )
    self.assertSameDetections(expected, _fast(outputs, batched, self.image_shape))
    first = tf.nest.map_structure(lambda t: t[:1], outputs)
    self.assertSameDetections(
      _v1(first, self.anchors, self.image_shape[:1]),
      _fast(first, self.anchors, self.image_shape[:1]),
    )

  def test_matches_v1_with_other_settings(self):
    cases = [
      # More candidates per class than pre_nms_top_k: v1's per-class top-k.
      (-5.0, dict(pre_nms_top_k=10, max_num_detections=7)),
      (-5.0, dict(nms_iou_threshold=0.3, pre_nms_score_threshold=0.3, max_num_detections=300)),
      # Every (anchor, class) pair is a candidate.
      (0.0, dict(pre_nms_score_threshold=0.0, pre_nms_top_k=50)),
    ]
    for bias, settings in cases:
      with self.subTest(bias=bias, **settings):
        outputs = self._biased(bias)
        expected = _v1(outputs, self.anchors, self.image_shape, **settings)
        # Both ways of selecting candidates: sorting them all, and each class's
        # top-k first (what very many candidates take).
        for dense_above in (10**9, 0):
          actual = _fast(
            outputs,
            self.anchors,
            self.image_shape,
            dense_candidates_per_image=dense_above,
            **settings,
          )
          self.assertSameDetections(expected, actual)
          self.assertGreater(int(tf.reduce_sum(actual['num_detections'])), 0)
    per_class = self._num_candidates(self._biased(-5.0))
    self.assertTrue(np.all(per_class > 10), per_class)

  def test_dynamic_batch_and_saved_model(self):
    level_specs = {
      key: {
        k: tf.TensorSpec([None] + v.shape[1:].as_list(), tf.float32)
        for k, v in self.outputs[key].items()
      }
      for key in self.outputs
    }

    class Detector(tf.Module):
      def __init__(self, anchors):
        super().__init__()
        self.anchors = anchors

      @tf.function(input_signature=[level_specs, tf.TensorSpec([None, 2], tf.float32)])
      def detect(self, outputs, image_shape):
        return postprocess.generate_detections_fast(outputs, self.anchors, image_shape)

    path = os.path.join(self.get_temp_dir(), 'detector')
    tf.saved_model.save(Detector(self.anchors), path)
    loaded = tf.saved_model.load(path)
    outputs = self._biased(-7.0)
    for batch_size in (1, 2):
      part = tf.nest.map_structure(lambda t, n=batch_size: t[:n], outputs)
      actual = loaded.detect(part, self.image_shape[:batch_size])
      self.assertEqual(actual['detection_boxes'].shape, (batch_size, 100, 4))
      self.assertSameDetections(_v1(part, self.anchors, self.image_shape[:batch_size]), actual)

  def test_default_nms_version_is_fast(self):
    outputs = self._biased(-7.0)
    default = retinanet_model.generate_detections(outputs, self.anchors, self.image_shape)
    fast = _fast(outputs, self.anchors, self.image_shape)
    for key in DETECTION_FIELDS + ('num_detections',):
      self.assertAllEqual(default[key], fast[key])
    with self.assertRaisesRegex(ValueError, "nms_version.*'v3'"):
      retinanet_model.generate_detections(outputs, self.anchors, self.image_shape, nms_version='v3')
    with self.assertRaisesRegex(ValueError, 'max_num_detections'):
      _fast(outputs, self.anchors, self.image_shape, max_num_detections=0)

  def test_crafted_suppression_thresholds_and_counts(self):
    image_shape = tf.constant([[100.0, 100.0]] * 3)
    boxes = np.zeros([3, 6, 4], np.float32)
    classes = np.ones([3, 6], np.int32)
    scores = np.full([3, 6], 0.01)
    # Image 0: two same-class boxes with IoU 0.9 (one suppressed), the same box
    # for another class (kept), and a box at IoU exactly 0.5 (v1 suppresses at
    # IoU >= threshold).
    boxes[0, :4] = [[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 30]]
    boxes[0, 4] = [20, 20, 30, 40]
    classes[0, :5] = [1, 1, 2, 3, 3]
    scores[0, :5] = [0.9, 0.8, 0.7, 0.6, 0.55]
    # Image 1: nothing above the threshold.
    scores[1, :2] = [0.049, 0.04]
    boxes[1, :2] = [[0, 0, 5, 5], [10, 10, 20, 20]]
    # Image 2: one detection, and one box clipped to all zeros (v1 drops it).
    boxes[2, :2] = [[40, 40, 50, 50], [-20, -20, -10, -10]]
    scores[2, :2] = [0.3, 0.95]
    outputs, anchors = _crafted(boxes, _one_hot_logits(classes, scores))
    expected = _v1(outputs, anchors, image_shape)
    actual = _fast(outputs, anchors, image_shape)
    self.assertSameDetections(expected, actual)
    self.assertAllEqual(actual['num_detections'], [3, 0, 1])
    self.assertAllClose(actual['detection_scores'][0, :3], [0.9, 0.7, 0.6])
    self.assertAllEqual(actual['detection_classes'][0, :3], [1, 2, 3])
    self.assertAllClose(
      actual['detection_boxes'][0, :3],
      [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]],
      atol=1e-5,
    )
    self.assertAllClose(actual['detection_boxes'][2, 0], [40, 40, 50, 50], atol=1e-5)

  def test_crafted_max_detections_and_ties(self):
    # 12 disjoint boxes; equal scores go to the lower class, then the lower anchor.
    boxes = np.array(
      [[[20 * (k // 4), 20 * (k % 4), 20 * (k // 4) + 10, 20 * (k % 4) + 10] for k in range(12)]],
      np.float32,
    )
    classes = [[3, 1, 2, 1, 4, 2, 3, 1, 2, 4, 1, 3]]
    scores = [[0.5, 0.5, 0.5, 0.9, 0.5, 0.8, 0.5, 0.5, 0.3, 0.5, 0.2, 0.5]]
    outputs, anchors = _crafted(boxes, _one_hot_logits(classes, scores))
    image_shape = tf.constant([[100.0, 100.0]])
    for settings in ({}, dict(max_num_detections=5), dict(pre_nms_top_k=2)):
      with self.subTest(**settings):
        expected = _v1(outputs, anchors, image_shape, **settings)
        actual = _fast(outputs, anchors, image_shape, **settings)
        self.assertSameDetections(expected, actual)
    few = _fast(outputs, anchors, image_shape, max_num_detections=5)
    self.assertAllEqual(few['num_detections'], [5])
    # 0.9 (anchor 3), 0.8 (anchor 5), then the 0.5 ties: class 1 (anchors 1, 7), class 2 (2).
    self.assertAllEqual(few['detection_classes'][0], [1, 2, 1, 1, 2])
    self.assertAllClose(few['detection_boxes'][0, :, :2], boxes[0, [3, 5, 1, 7, 2], :2], atol=1e-5)
    # pre_nms_top_k=2: per class only the 2 best (ties: lower anchors) are candidates.
    top2 = _fast(outputs, anchors, image_shape, pre_nms_top_k=2)
    self.assertAllEqual(top2['num_detections'], [8])

  def test_empty_results(self):
    outputs, anchors = _crafted(
      np.array([[[0, 0, 10, 10]]] * 2), np.full([2, 1, NUM_CLASSES], -10.0)
    )
    actual = _fast(outputs, anchors, tf.constant([[50.0, 50.0]] * 2))
    self.assertAllEqual(actual['num_detections'], [0, 0])
    self.assertEqual(actual['detection_boxes'].shape, (2, 100, 4))
    for key in DETECTION_FIELDS:
      self.assertAllEqual(actual[key], tf.zeros_like(actual[key]))

  def test_documented_differences(self):
    # Padding: zeros past num_detections (v1: score -1 and some box and class).
    outputs, anchors = _crafted(
      [[[0, 0, 10, 10], [20, 20, 30, 30]]], _one_hot_logits([[1, 2]], [[0.9, 0.6]])
    )
    image_shape = tf.constant([[50.0, 50.0]])
    expected = _v1(outputs, anchors, image_shape)
    actual = _fast(outputs, anchors, image_shape)
    self.assertSameDetections(expected, actual)
    self.assertAllEqual(expected['detection_scores'][0, 2:], -tf.ones([98]))
    for key in DETECTION_FIELDS:
      self.assertAllEqual(actual[key][0, 2:], tf.zeros_like(actual[key][0, 2:]))
    # Sub-pixel boxes: two equal 1e-4 x 1e-4 px boxes. v1's IoU is
    # about 1e-8 / (1e-8 + 1e-8 epsilon) = 0.5, so at threshold 0.6 it keeps both;
    # the true IoU is 1 and we keep one.
    tiny = [[[10, 10, 10.0001, 10.0001], [10, 10, 10.0001, 10.0001]]]
    outputs, anchors = _crafted(tiny, _one_hot_logits([[1, 1]], [[0.9, 0.8]]))
    settings = dict(nms_iou_threshold=0.6)
    self.assertAllEqual(_v1(outputs, anchors, image_shape, **settings)['num_detections'], [2])
    self.assertAllEqual(_fast(outputs, anchors, image_shape, **settings)['num_detections'], [1])

  def test_benchmark_feeds_inputs_as_arguments(self):
    # Captured inputs would be graph constants that grappler may fold at trace time.
    outputs = self._biased(-7.0)
    inputs = (outputs, self.anchors, self.image_shape)
    input_shapes = {tuple(t.shape) for t in tf.nest.flatten(inputs)}
    for version in ('fast', 'v1'):
      with self.subTest(version=version):
        function = postprocess_benchmark.post_processing(version)
        captured = function.get_concrete_function(*inputs).captured_inputs
        self.assertFalse(
          [t for t in captured if tuple(t.shape) in input_shapes and t.shape.rank], captured
        )
    postprocess_benchmark.assert_same_detections(
      _v1(*inputs), postprocess_benchmark.post_processing('fast')(*inputs)
    )


def test_eager_anchors_are_built_once_and_graph_anchors_as_ops():
  first = retinanet_model.multilevel_anchor_boxes((IMAGE_SIZE, IMAGE_SIZE), 3, 7)
  again = retinanet_model.multilevel_anchor_boxes(
    [IMAGE_SIZE, IMAGE_SIZE], 3, 7, aspect_ratios=[0.5, 1.0, 2.0]
  )
  assert all(first[level] is again[level] for level in first)
  other = retinanet_model.multilevel_anchor_boxes((IMAGE_SIZE, IMAGE_SIZE), 3, 7, anchor_size=3.0)
  assert not np.array_equal(other['3'], first['3'])
  # In a graph they are ops grappler can fold, not captured eager tensors.
  traced = tf.function(
    lambda: retinanet_model.multilevel_anchor_boxes((IMAGE_SIZE, IMAGE_SIZE), 3, 7)['3']
  ).get_concrete_function()
  assert not traced.captured_inputs, traced.captured_inputs
  np.testing.assert_array_equal(traced(), first['3'])


def test_benchmark_interleaves_its_runs():
  calls = []

  def call(name):
    calls.append(name)
    return tf.constant(len(calls))

  seconds, results = timing.interleaved_medians(
    {'a': lambda: call('a'), 'b': lambda: call('b')}, {'a': 3, 'b': 1}
  )
  # One untimed call each, then rounds: a b, a, a.
  assert calls == ['a', 'b', 'a', 'b', 'a', 'a'], calls
  assert sorted(seconds) == ['a', 'b'] and min(seconds.values()) >= 0.0, seconds
  assert int(results['a']) == 6 and int(results['b']) == 4, results


def test_benchmark_reports_ratios():
  r = postprocess_benchmark.Comparison(1, 1000, 2.0, 0.02, 0.03, 0.05, 10.0, 12.0)
  assert '(1.0% of it; eager 1.5%, SavedModel 2.5%)' in postprocess_benchmark.describe(r)
  last_row = postprocess_benchmark.markdown_table([r]).splitlines()[-1]
  expected = '|1|1000|2.00s|20.0ms|1.0%|1.5%|2.5%|10.00s|500x|12.00s|600x|'
  assert last_row.replace(' ', '') == expected, last_row


def test_ops_module_imports_neither_gin_nor_model_garden_at_load():
  """Model Garden is imported lazily (its package __init__ loads gin and its SpineNet)."""
  with open(postprocess.__file__) as f:
    tree = ast.parse(f.read())
  top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
  names = [alias.name for node in top_level for alias in node.names]
  names += [node.module for node in top_level if isinstance(node, ast.ImportFrom)]
  assert not [n for n in names if n and (n.startswith('official.') or n.startswith('gin'))], names


if __name__ == '__main__':
  tf.test.main()

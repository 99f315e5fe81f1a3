"""ClassificationHead and ClassificationModel (SpineNet Sec. 5): fusion, shapes, configs."""

import os

from absl.testing import parameterized
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import classification_model
from official_spinenet.modeling import published_models
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import classification_head
from official_spinenet.modeling.layers import resample

NUM_CLASSES = 5
CHANNELS = 8


def _features(image_size=64, min_level=3, max_level=5, batch=2, seed=0):
  """str(level) -> [B, ceil(S / 2^l), ceil(S / 2^l), C], as 'same' padding gives."""
  rng = np.random.default_rng(seed)
  features = {}
  for level in range(min_level, max_level + 1):
    size = -(-image_size // 2**level)
    features[str(level)] = rng.normal(size=[batch, size, size, CHANNELS]).astype(np.float32)
  return features


def _nearest_resize(x, size):
  """Numpy nearest-neighbour resize with half-pixel centres (TF2's 'nearest')."""
  rows = np.minimum(((np.arange(size) + 0.5) * x.shape[1] / size).astype(int), x.shape[1] - 1)
  cols = np.minimum(((np.arange(size) + 0.5) * x.shape[2] / size).astype(int), x.shape[2] - 1)
  return x[:, rows][:, :, cols]


def _expected_logits(head, features, levels):
  """The head by hand: nearest-resize to the lowest level, mean, GAP, dense."""
  size = features[str(levels[0])].shape[1]
  fused = np.mean([_nearest_resize(features[str(l)], size) for l in levels], axis=0)
  kernel, bias = (w.numpy() for w in head.weights)
  return fused.mean(axis=(1, 2)) @ kernel + bias


def _tiny_backbone(image_size=128, family='spinenet', width=None):
  width = image_size if width is None else width
  return factory.build_backbone(
    family,
    '49',
    input_specs=[None, image_size, width, 3],
    filter_size_scale=0.25,
    endpoints_num_filters=16,
  )


def _layer_types(model):
  return [type(layer).__name__ for layer in model.layers]


class ClassificationHeadTest(tf.test.TestCase, parameterized.TestCase):
  def test_output_shape_and_initializers(self):
    head = classification_head.ClassificationHead(NUM_CLASSES, min_level=3, max_level=5)
    logits = head(_features())
    self.assertEqual(logits.shape, [2, NUM_CLASSES])
    self.assertEqual(logits.dtype, tf.float32)
    kernel, bias = head.weights
    self.assertEqual(kernel.shape, [CHANNELS, NUM_CLASSES])
    self.assertAllEqual(bias, np.zeros(NUM_CLASSES))
    self.assertIsInstance(head._classifier.kernel_initializer, tf_keras.initializers.RandomNormal)
    self.assertEqual(head._classifier.kernel_initializer.stddev, 0.01)

  def test_fusion_upsamples_by_repeating_when_sizes_divide(self):
    features = _features(image_size=64)
    head = classification_head.ClassificationHead(NUM_CLASSES, min_level=3, max_level=5)
    logits = head(features).numpy()
    # Exact integer-factor upsampling: each P_l pixel repeated 2^(l - 3) times.
    fused = np.mean(
      [np.repeat(np.repeat(features[str(l)], 2 ** (l - 3), 1), 2 ** (l - 3), 2) for l in (3, 4, 5)],
      axis=0,
    )
    kernel, bias = (w.numpy() for w in head.weights)
    self.assertAllClose(logits, fused.mean(axis=(1, 2)) @ kernel + bias, atol=1e-5)
    self.assertAllClose(logits, _expected_logits(head, features, (3, 4, 5)), atol=1e-5)

  @parameterized.parameters(224, 200)
  def test_fusion_resizes_to_p3_when_sizes_do_not_divide(self, image_size):
    # 224: P3..P7 are 28, 14, 7, 4, 2; 4 * 2 != 7 and 2 * 16 != 28.
    features = _features(image_size=image_size, min_level=3, max_level=7)
    head = classification_head.ClassificationHead(NUM_CLASSES)
    self.assertAllClose(
      head(features), _expected_logits(head, features, (3, 4, 5, 6, 7)), atol=1e-5
    )

  def test_top_level_pools_max_level_only(self):
    features = _features()
    head = classification_head.ClassificationHead(
      NUM_CLASSES, min_level=3, max_level=5, fusion='top_level'
    )
    logits = head({'5': features['5']})
    self.assertAllClose(logits, _expected_logits(head, features, (5,)), atol=1e-5)
    self.assertAllClose(head(features), logits)

  def test_dropout_only_in_training(self):
    head = classification_head.ClassificationHead(
      NUM_CLASSES, min_level=3, max_level=5, dropout_rate=0.5
    )
    features = _features()
    self.assertAllClose(head(features), head(features, training=False))
    self.assertNotAllClose(head(features, training=True), head(features, training=False))

  def test_config_round_trip(self):
    head = classification_head.ClassificationHead(
      NUM_CLASSES,
      min_level=3,
      max_level=5,
      fusion='top_level',
      dropout_rate=0.2,
      kernel_regularizer=tf_keras.regularizers.L2(1e-4),
      name='cls_head',
    )
    config = head.get_config()
    clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(head))
    self.assertEqual(clone.get_config(), config)
    self.assertEqual(config['fusion'], 'top_level')
    self.assertEqual(config['dropout_rate'], 0.2)
    self.assertEqual(clone.name, 'cls_head')
    clone(_features())
    self.assertLen(clone.losses, 1)  # the dense kernel's L2

  @parameterized.named_parameters(
    ('fusion', dict(fusion='mean'), 'fusion must be one of'),
    ('levels', dict(min_level=5, max_level=3), 'greater than max_level'),
    ('min_level', dict(min_level=0), 'min_level must be >= 1'),
    ('classes', dict(num_classes=0), 'num_classes must be'),
    ('dropout', dict(dropout_rate=1.0), r'dropout_rate must be in \[0, 1\)'),
  )
  def test_bad_options(self, overrides, message):
    kwargs = {'num_classes': NUM_CLASSES, **overrides}
    with self.assertRaisesRegex(ValueError, message):
      classification_head.ClassificationHead(**kwargs)

  def test_missing_level(self):
    head = classification_head.ClassificationHead(NUM_CLASSES, min_level=3, max_level=5)
    features = _features()
    del features['4']
    with self.assertRaisesRegex(ValueError, r"missing \['4'\]"):
      head(features)

  def test_logits_float32_under_mixed_precision(self):
    tf_keras.mixed_precision.set_global_policy('mixed_float16')
    try:
      head = classification_head.ClassificationHead(NUM_CLASSES, min_level=3, max_level=5)
      features = {k: tf.cast(v, tf.float16) for k, v in _features().items()}
      logits = head(features)
    finally:
      tf_keras.mixed_precision.set_global_policy('float32')
    self.assertEqual(logits.dtype, tf.float32)
    self.assertEqual(head._classifier.kernel.dtype, tf.float32)


class ClassificationModelTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters('feature_fusion', 'top_level')
  def test_logits_shape(self, fusion):
    tf_keras.utils.set_random_seed(0)
    model = classification_model.ClassificationModel(
      _tiny_backbone(), classification_head.ClassificationHead(NUM_CLASSES, fusion=fusion)
    )
    logits = model(tf.random.normal([2, 128, 128, 3]), training=False)
    self.assertEqual(logits.shape, [2, NUM_CLASSES])
    self.assertEqual(set(model.checkpoint_items), {'backbone', 'head'})
    self.assertIs(model.checkpoint_items['backbone'], model.backbone)

  @parameterized.parameters('spinenet', 'spinenet_mobile')
  def test_224_input(self, family):
    # The paper's ImageNet size: not a multiple of 2^7, P3..P7 are 28, 14, 7, 4, 2.
    tf_keras.utils.set_random_seed(0)
    backbone = _tiny_backbone(224, family)
    shapes = {level: spec.as_list() for level, spec in backbone.output_specs.items()}
    self.assertEqual({level: s[1:3] for level, s in shapes.items()}, {
      '3': [28, 28], '4': [14, 14], '5': [7, 7], '6': [4, 4], '7': [2, 2],
    })  # fmt: skip
    model = classification_model.ClassificationModel(
      backbone, classification_head.ClassificationHead(NUM_CLASSES)
    )
    logits = model(tf.random.normal([2, 224, 224, 3]), training=False)
    self.assertEqual(logits.shape, [2, NUM_CLASSES])
    self.assertTrue(np.all(np.isfinite(logits)))

  def test_config_round_trip(self):
    tf_keras.utils.set_random_seed(0)
    model = classification_model.ClassificationModel(
      _tiny_backbone(), classification_head.ClassificationHead(NUM_CLASSES, dropout_rate=0.1)
    )
    images = tf.random.normal([1, 128, 128, 3])
    logits = model(images, training=False)
    clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(model))
    self.assertIsInstance(clone, classification_model.ClassificationModel)
    clone(images)
    clone.set_weights(model.get_weights())
    self.assertAllClose(clone(images, training=False), logits)
    self.assertEqual(clone.head.get_config()['dropout_rate'], 0.1)


class SizeMatchingResampleTest(tf.test.TestCase, parameterized.TestCase):
  """Backbones at sizes that are not multiples of 2^max_level, and the plain path."""

  def test_nearest_resize_layer(self):
    x = tf.random.normal([2, 4, 4, 3])
    layer = resample.NearestResize((7, 8))
    self.assertAllEqual(layer(x), tf.image.resize(x, [7, 8], method='nearest'))
    self.assertEqual(layer.compute_output_shape([2, 4, 4, 3]), [2, 7, 8, 3])
    clone = resample.NearestResize.from_config(layer.get_config())
    self.assertAllEqual(clone(x), layer(x))
    with self.assertRaisesRegex(ValueError, 'two positive ints'):
      resample.NearestResize((7,))

  @parameterized.parameters(
    # (input (h, w), target (h, w), layer): integer factors repeat, the rest resize.
    ((4, 4), (8, 8), 'NearestUpsampling'),
    ((None, 4), (None, 16), 'NearestUpsampling'),
    ((4, 4), (7, 7), 'NearestResize'),
    ((2, 2), (28, 28), 'NearestUpsampling'),
    ((4, 4), (7, 8), 'NearestResize'),
  )
  def test_upsample_path(self, input_size, target_size, layer_name):
    inputs = tf_keras.Input([input_size[0], input_size[1], 3])
    outputs = resample.upsample(inputs, input_size, target_size)
    model = tf_keras.Model(inputs, outputs)
    self.assertEqual(outputs.shape[1:3], [target_size[0], target_size[1]])
    self.assertIn(layer_name, _layer_types(model))

  def test_upsample_without_height_needs_integer_factor(self):
    with self.assertRaisesRegex(ValueError, 'height is dynamic'):
      resample.upsample(tf_keras.Input([None, 4, 3]), (None, 4), (None, 7))

  @parameterized.parameters('spinenet', 'spinenet_mobile')
  def test_divisible_size_keeps_the_integer_factor_graph(self, family):
    # 256 static, and dynamic, build the same graph as before: no resize anywhere,
    # the same outputs (tests/test_spinenet*.py pin them against tf-models-official).
    tf_keras.utils.set_random_seed(0)
    static = _tiny_backbone(256, family)
    dynamic = factory.build_backbone(family, '49', filter_size_scale=0.25, endpoints_num_filters=16)
    dynamic.set_weights(static.get_weights())
    self.assertNotIn('NearestResize', _layer_types(static))
    self.assertEqual(_layer_types(static), _layer_types(dynamic))
    images = tf.random.normal([1, 256, 256, 3])
    for level, features in static(images).items():
      self.assertAllEqual(features, dynamic(images)[level])

  @parameterized.parameters('spinenet', 'spinenet_mobile')
  def test_224_keeps_the_checkpoint_layout(self, family):
    # Resizes replace integer upsampling one for one, at the same graph depth, so
    # a checkpoint of a 256 build restores into a 224 build (and back).
    tf_keras.utils.set_random_seed(0)
    at_256 = _tiny_backbone(256, family)
    at_224 = _tiny_backbone(224, family)
    self.assertIn('NearestResize', _layer_types(at_224))
    path = tf.train.Checkpoint(backbone=at_256).write(os.path.join(self.get_temp_dir(), family))
    tf.train.Checkpoint(backbone=at_224).read(path).assert_consumed()
    for ours, theirs in zip(at_224.weights, at_256.weights):
      self.assertAllEqual(ours, theirs)

  def test_non_square_input(self):
    backbone = _tiny_backbone(224, width=256)
    endpoints = backbone(tf.random.normal([1, 224, 256, 3]))
    for level, size in zip(range(3, 8), (28, 14, 7, 4, 2)):
      self.assertEqual(endpoints[str(level)].shape, [1, size, 256 // 2**level, 16])

  @parameterized.named_parameters(
    ('too_small', [None, 96, 256, 3], r'input height 96 is smaller than 2\^max_level = 128'),
    ('dynamic_side', [None, 200, None, 3], r'input height 200 is not divisible'),
  )
  def test_bad_input_sizes(self, input_specs, message):
    with self.assertRaisesRegex(ValueError, message):
      factory.build_backbone('spinenet', '49', input_specs=input_specs, filter_size_scale=0.25)


@pytest.mark.slow
def test_spinenet49_imagenet_stats_row_at_224():
  # Counted at 224 directly (backbone built for 224, the paper's head): the
  # published 22.1M parameters and 3.5B multiply-adds (SpineNet Table 6).
  (row,) = published_models.compute_rows(['49'], ['classification'])
  assert (row['kind'], row['resolution']) == ('classification', 224)
  assert (row['published_params_m'], row['published_multiply_adds_b']) == (22.1, 3.5)
  assert abs(row['params_diff_pct']) < 0.5
  assert abs(row['multiply_adds_diff_pct']) < 1.0
  assert 'P3-P7 fused' in row['note']

"""Tests of the RetinaNet head against tf-models-official's RetinaNetHead."""

import math
import os

from absl.testing import parameterized
import numpy as np
from official.vision.modeling.heads import dense_prediction_heads as reference
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.heads import retinanet_head

MIN_LEVEL, MAX_LEVEL = 3, 5
IMAGE_SIZE = 64
CHANNELS = 8


def _features(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  return {
    str(l): tf.constant(
      rng.normal(size=[batch, IMAGE_SIZE // 2**l, IMAGE_SIZE // 2**l, CHANNELS]).astype(np.float32)
    )
    for l in range(MIN_LEVEL, MAX_LEVEL + 1)
  }


def _kwargs(**overrides):
  kwargs = dict(
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    num_classes=5,
    num_anchors_per_location=3,
    num_convs=2,
    num_filters=16,
  )
  kwargs.update(overrides)
  return kwargs


class RetinaNetHeadTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(False, True)
  def test_output_shapes(self, use_separable_conv):
    head = retinanet_head.RetinaNetHead(**_kwargs(use_separable_conv=use_separable_conv))
    scores, boxes = head(_features())
    self.assertEqual(sorted(scores), ['3', '4', '5'])
    self.assertEqual(sorted(boxes), ['3', '4', '5'])
    for level in range(MIN_LEVEL, MAX_LEVEL + 1):
      size = IMAGE_SIZE // 2**level
      self.assertEqual(scores[str(level)].shape, [2, size, size, 5 * 3])
      self.assertEqual(boxes[str(level)].shape, [2, size, size, 4 * 3])

  @parameterized.named_parameters(
    ('plain', dict()),
    ('separable', dict(use_separable_conv=True)),
    ('no_convs', dict(num_convs=0)),
    (
      'paper_49',
      dict(
        num_classes=91,
        num_anchors_per_location=9,
        num_convs=4,
        num_filters=256,
        min_level=3,
        max_level=7,
      ),
    ),
    (
      'mobile_49',
      dict(
        num_classes=91,
        num_anchors_per_location=9,
        num_convs=4,
        num_filters=48,
        min_level=3,
        max_level=7,
        use_separable_conv=True,
      ),
    ),
    ('sync_bn_swish', dict(use_sync_bn=True, activation='swish')),
  )
  def test_matches_model_garden_parameters(self, overrides):
    kwargs = _kwargs(**overrides)
    ours = retinanet_head.RetinaNetHead(**kwargs)
    ref = reference.RetinaNetHead(**kwargs)
    features = {
      str(l): tf_keras.Input([4, 4, CHANNELS])
      for l in range(kwargs['min_level'], kwargs['max_level'] + 1)
    }
    ours(features)
    ref(features)
    self.assertEqual(ours.count_params(), ref.count_params())
    self.assertEqual(
      sum(int(np.prod(w.shape)) for w in ours.trainable_weights),
      sum(int(np.prod(w.shape)) for w in ref.trainable_weights),
    )
    # Same variables in the same creation order, under the same names.
    strip = lambda w: w.name.split('/', 1)[1]
    self.assertEqual([strip(w) for w in ours.weights], [strip(w) for w in ref.weights])
    self.assertEqual([w.shape for w in ours.weights], [w.shape for w in ref.weights])

  @parameterized.parameters(False, True)
  def test_model_garden_checkpoint_restores_and_matches(self, use_separable_conv):
    kwargs = _kwargs(use_separable_conv=use_separable_conv, activation='swish')
    features = _features()
    ref = reference.RetinaNetHead(**kwargs)
    ref(features)
    rng = np.random.default_rng(1)
    ref.set_weights(
      [rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32) * 0.3 for w in ref.get_weights()]
    )
    path = tf.train.Checkpoint(head=ref).save(os.path.join(self.get_temp_dir(), 'ckpt'))
    ours = retinanet_head.RetinaNetHead(**kwargs)
    ours(features)
    tf.train.Checkpoint(head=ours).restore(path).assert_consumed()
    ref_scores, ref_boxes, _ = ref(features, training=False)
    scores, boxes = ours(features, training=False)
    for level in scores:
      self.assertAllClose(scores[level], ref_scores[level], rtol=1e-5, atol=1e-5)
      self.assertAllClose(boxes[level], ref_boxes[level], rtol=1e-5, atol=1e-5)

  def test_initialization(self):
    head = retinanet_head.RetinaNetHead(**_kwargs())
    head(_features())
    self.assertAllClose(head._classifier.bias, np.full([15], -math.log(99.0)), rtol=1e-6)
    self.assertAllEqual(head._box_regressor.bias, np.zeros([12]))
    self.assertAllEqual(head._cls_convs[0].bias, np.zeros([16]))
    self.assertLess(float(np.std(head._classifier.kernel.numpy())), 1e-4)
    self.assertNear(float(np.std(head._cls_convs[0].kernel.numpy())), 0.01, 0.002)
    # Class scores start at the focal-loss prior.
    scores, _ = head(_features(), training=False)
    self.assertAllClose(tf.sigmoid(scores['3']), tf.fill(scores['3'].shape, 0.01), atol=1e-3)
    # One BN per level and tower conv, convs shared.
    self.assertLen(head._cls_convs, 2)
    self.assertLen(head._cls_norms, 3)
    self.assertEqual(head._cls_norms[2][1].name, 'classnet-conv-norm_5_1')

  @parameterized.parameters(False, True)
  def test_config_round_trip(self, use_separable_conv):
    head = retinanet_head.RetinaNetHead(
      **_kwargs(
        use_separable_conv=use_separable_conv,
        activation='hard_swish',
        kernel_regularizer=tf_keras.regularizers.L2(4e-5),
        norm_momentum=0.97,
      ),
      name='my_head',
    )
    config = head.get_config()
    self.assertEqual(config['num_filters'], 16)
    self.assertEqual(config['name'], 'my_head')
    clone = retinanet_head.RetinaNetHead.from_config(config)
    self.assertEqual(clone.get_config(), config)
    self.assertIsInstance(clone._config_dict['kernel_regularizer'], tf_keras.regularizers.L2)
    serialized = tf_keras.layers.serialize(head)
    self.assertIn('official_spinenet', str(serialized))
    clone = tf_keras.layers.deserialize(serialized)
    self.assertIsInstance(clone, retinanet_head.RetinaNetHead)
    self.assertEqual(clone.get_config(), config)
    head(_features())
    clone(_features())
    self.assertEqual(clone.count_params(), head.count_params())
    self.assertLen(clone.losses, len(head.losses))

  def test_in_functional_model(self):
    inputs = {
      str(l): tf_keras.Input([IMAGE_SIZE // 2**l, IMAGE_SIZE // 2**l, CHANNELS])
      for l in range(MIN_LEVEL, MAX_LEVEL + 1)
    }
    scores, boxes = retinanet_head.RetinaNetHead(**_kwargs())(inputs)
    model = tf_keras.Model(inputs, {'scores': scores, 'boxes': boxes})
    out = model(_features(batch=1))
    self.assertEqual(out['boxes']['4'].shape, [1, 4, 4, 12])

  def test_missing_level_raises(self):
    head = retinanet_head.RetinaNetHead(**_kwargs())
    features = _features()
    del features['4']
    with self.assertRaisesRegex(ValueError, r"missing \['4'\]"):
      head(features)

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, 'min_level 5 is greater'):
      retinanet_head.RetinaNetHead(**_kwargs(min_level=5, max_level=3))
    with self.assertRaisesRegex(ValueError, 'num_filters'):
      retinanet_head.RetinaNetHead(**_kwargs(num_filters=0))
    with self.assertRaisesRegex(ValueError, 'Unknown activation'):
      retinanet_head.RetinaNetHead(**_kwargs(activation='nope'))


if __name__ == '__main__':
  tf.test.main()

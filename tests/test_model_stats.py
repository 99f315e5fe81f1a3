"""Tests of parameter / multiply-add counting and of the spinenet-stats binary."""

import json
import time

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import model_stats
from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.heads import retinanet_head
from tests import binaries
from tests import paths

REPO = paths.REPO


def _small_model():
  """conv -> depthwise -> separable -> dense, with hand-computed multiply-adds."""
  inputs = tf_keras.Input([8, 8, 3])
  x = tf_keras.layers.Conv2D(4, 3, strides=2, padding='same')(inputs)
  x = tf_keras.layers.BatchNormalization()(x)
  x = tf_keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding='same')(x)
  x = tf_keras.layers.SeparableConv2D(5, 3, padding='valid')(x)
  x = tf_keras.layers.MaxPool2D(1)(x)
  x = tf_keras.layers.Flatten()(x)
  x = tf_keras.layers.Dense(7)(x)
  return tf_keras.Model(inputs, x)


# conv: 4x4 out * 3x3 * 3 in * 4 out; depthwise: 4x4 * 3x3 * 4 * 2;
# separable (valid, 2x2 out): 2x2 * 3x3 * 8 + 2x2 * 8 * 5; dense: 20 * 7.
SMALL_MODEL_MADDS = 16 * 9 * 3 * 4 + 16 * 9 * 4 * 2 + (4 * 9 * 8 + 4 * 8 * 5) + 20 * 7
# conv 3*3*3*4+4; BN gamma/beta 8; depthwise 3*3*4*2+8; separable 3*3*8+8*5+5; dense 20*7+7.
SMALL_MODEL_PARAMS = 112 + 8 + 80 + 117 + 147


class CountTest(tf.test.TestCase, parameterized.TestCase):
  def test_small_model_exact(self):
    model = _small_model()
    self.assertEqual(model_stats.count_multiply_adds(model, [1, 8, 8, 3]), SMALL_MODEL_MADDS)
    calls = model_stats.multiply_adds_by_layer(model, [None, 8, 8, 3])
    self.assertEqual(
      [c.kind for c in calls], ['Conv2D', 'DepthwiseConv2D', 'SeparableConv2D', 'Dense']
    )
    self.assertEqual([c.multiply_adds for c in calls], [1728, 1152, 448, 140])
    self.assertEqual(calls[2].output_shape, (1, 2, 2, 5))

  def test_per_image_for_any_batch(self):
    self.assertEqual(
      model_stats.count_multiply_adds(_small_model(), [4, 8, 8, 3]), SMALL_MODEL_MADDS
    )

  def test_count_params(self):
    model = _small_model()
    self.assertEqual(model_stats.count_params(model), SMALL_MODEL_PARAMS)
    # BN moving statistics are not trainable.
    self.assertEqual(model.count_params(), SMALL_MODEL_PARAMS + 8)

  def test_unbuilt_layer_params_raise(self):
    with self.assertRaisesRegex(ValueError, 'not built'):
      model_stats.count_params(tf_keras.layers.Dense(3))

  def test_instrumentation_is_removed(self):
    model = _small_model()
    model_stats.count_multiply_adds(model, [1, 8, 8, 3])
    for layer in model.layers:
      self.assertNotIn('call', layer.__dict__)
    self.assertEqual(model(tf.ones([1, 8, 8, 3])).shape, [1, 7])

  def test_shared_layer_counts_every_call_and_nested_models(self):
    conv = tf_keras.layers.Conv2D(2, 1, use_bias=False)
    inner_in = tf_keras.Input([4, 4, 3])
    inner = tf_keras.Model(inner_in, conv(inner_in))
    inputs = tf_keras.Input([4, 4, 3])
    outputs = tf_keras.layers.Add()([inner(inputs), conv(inputs), conv(inputs)])
    model = tf_keras.Model(inputs, outputs)
    self.assertEqual(model_stats.count_multiply_adds(model, [1, 4, 4, 3]), 3 * 16 * 3 * 2)
    self.assertEqual(model_stats.count_params(model), 6)

  def test_grouped_and_transposed_convs(self):
    inputs = tf_keras.Input([6, 6, 4])
    x = tf_keras.layers.Conv2D(8, 3, groups=2, padding='same')(inputs)
    x = tf_keras.layers.Conv2DTranspose(2, 2, strides=2)(x)
    model = tf_keras.Model(inputs, x)
    self.assertEqual(
      model_stats.count_multiply_adds(model, [1, 6, 6, 4]), 36 * 9 * 2 * 8 + 36 * 4 * 8 * 2
    )

  def test_unbuilt_head_with_dict_input(self):
    head = retinanet_head.RetinaNetHead(
      min_level=3,
      max_level=4,
      num_classes=2,
      num_anchors_per_location=1,
      num_convs=1,
      num_filters=4,
    )
    shapes = {'3': [1, 4, 4, 6], '4': [1, 2, 2, 6]}
    positions = 16 + 4
    expected = positions * 9 * (6 * 4 + 4 * 2 + 6 * 4 + 4 * 4)
    self.assertEqual(model_stats.count_multiply_adds(head, shapes), expected)
    self.assertLen(model_stats.multiply_adds_by_layer(head, shapes), 8)

  def test_by_part_attributes_every_call(self):
    inner_in = tf_keras.Input([4, 4, 3])
    inner = tf_keras.Model(inner_in, tf_keras.layers.Conv2D(2, 1)(inner_in))
    inputs = tf_keras.Input([4, 4, 3])
    x = tf_keras.layers.Conv2D(3, 1)(inner(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(5)(x))
    calls = model_stats.multiply_adds_by_layer(model, [1, 4, 4, 3])
    parts = model_stats.by_part(calls, {'inner': inner, 'conv': model.layers[2]})
    self.assertEqual(parts, {'inner': 16 * 3 * 2, 'conv': 16 * 2 * 3, 'other': 16 * 3 * 5})
    self.assertEqual(sum(parts.values()), model_stats.count_multiply_adds(model, [1, 4, 4, 3]))

  def test_dynamic_shape_raises(self):
    with self.assertRaisesRegex(ValueError, 'static'):
      model_stats.count_multiply_adds(tf_keras.layers.Conv2D(2, 1), tf.TensorSpec([1, None, 4, 3]))


class SpineNetStatsTest(tf.test.TestCase):
  def test_spinenet49_params_and_area_scaling(self):
    # One test, so that parallel workers do not build SpineNet-49 twice.
    backbone = spinenet.build_spinenet('49', input_specs=[None, None, None, 3])
    from official.vision.modeling.backbones import spinenet as reference  # pylint: disable=g-import-not-at-top

    ref = reference.SpineNet(
      input_specs=tf_keras.layers.InputSpec(shape=[None, 256, 256, 3]),
      min_level=3,
      max_level=7,
      endpoints_num_filters=256,
      resample_alpha=0.5,
      block_repeats=1,
      filter_size_scale=1.0,
    )
    ref_params = sum(int(np.prod(w.shape)) for w in ref.trainable_weights)
    ours = model_stats.count_params(backbone)
    self.assertBetween(ours, 21.7e6, 21.9e6)
    self.assertLess(abs(ours - ref_params) / ref_params, 0.005)

    # A fully convolutional network: multiply-adds are proportional to the area
    # (exactly, for sizes divisible by 2^7).
    small = model_stats.count_multiply_adds(backbone, [1, 256, 256, 3])
    large = model_stats.count_multiply_adds(backbone, [1, 640, 640, 3])
    self.assertEqual(small * (640 / 256) ** 2, large)
    # SpineNet-49 backbone at 640: 28.3B; with the 57.0B head, the paper's 85.4B.
    self.assertBetween(large, 28.0e9, 28.5e9)


# Multiply-adds of one RoI through the SpineNet-49 Mask R-CNN heads (256 wide, 91
# classes). Box head on 7x7 crops: 4 convs 3x3, FC 7*7*256 -> 1024, class and
# per-class box outputs. Mask head on 14x14 crops: 4 convs 3x3, 2x2 deconv on the
# 14x14 input, 1x1 conv to 91 masks at 28x28.
BOX_HEAD_PER_ROI = 4 * 49 * 9 * 256 * 256 + 49 * 256 * 1024 + 1024 * (91 + 4 * 91)
MASK_HEAD_PER_ROI = 4 * 196 * 9 * 256 * 256 + 196 * 4 * 256 * 256 + 784 * 256 * 91
# RPN: one 3x3 conv + 1x1 score (3 anchors) and box (12) convs on levels 3-7 at 256.
RPN_POSITIONS_256 = 32**2 + 16**2 + 8**2 + 4**2 + 2**2


class MaskRCNNStatsTest(tf.test.TestCase):
  def test_spinenet49_maskrcnn_row(self):
    from official_spinenet.modeling import published_models  # pylint: disable=g-import-not-at-top

    (row,) = published_models.compute_rows(['49'], ['maskrcnn'], resolution_override=256)
    self.assertEqual((row['kind'], row['resolution']), ('maskrcnn', 256))
    self.assertEqual((row['published_params_m'], row['published_multiply_adds_b']), (40.8, 215.7))
    parts = ('backbone', 'rpn_head', 'detection_head', 'mask_head')
    breakdown = row['breakdown']
    self.assertEqual(sum(breakdown[f'{p}_params'] for p in parts), row['params'])
    self.assertEqual(sum(breakdown[f'{p}_multiply_adds'] for p in parts), row['multiply_adds'])
    # Parameters do not depend on the resolution: 40.75M against the published 40.8M.
    self.assertBetween(row['params_m'], 40.6, 41.0)
    # The second stage at inference: the box head on the 1000 proposals, the mask
    # head on the 100 detections, whatever the image size.
    self.assertEqual(breakdown['detection_head_multiply_adds'], 1000 * BOX_HEAD_PER_ROI)
    self.assertEqual(breakdown['mask_head_multiply_adds'], 100 * MASK_HEAD_PER_ROI)
    self.assertEqual(
      breakdown['rpn_head_multiply_adds'], RPN_POSITIONS_256 * 256 * (9 * 256 + 3 + 12)
    )
    # The backbone scales with the area: 28.26B at 640.
    self.assertBetween(breakdown['backbone_multiply_adds'], 28.0e9 * 0.16, 28.5e9 * 0.16)


class StatsBinaryTest(tf.test.TestCase):
  def test_json_output(self):
    start = time.time()
    result = binaries.run_binary(
      'stats',
      '--models=49',
      '--include=retinanet,backbone,classification',
      '--json',
      '--resolution_override=256',
      cwd=REPO,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    data = json.loads(result.stdout)
    print(f'spinenet-stats --models=49 took {time.time() - start:.1f} s')
    self.assertIn('convention', data)
    rows = {row['kind']: row for row in data['rows']}
    self.assertCountEqual(rows, ['retinanet', 'backbone', 'classification'])
    for row in rows.values():
      for key in (
        'model',
        'resolution',
        'params',
        'params_m',
        'published_params_m',
        'multiply_adds',
        'multiply_adds_b',
        'published_multiply_adds_b',
        'note',
      ):
        self.assertIn(key, row)
      self.assertEqual(row['model'], '49')
      self.assertEqual(row['resolution'], 256)
    retinanet = rows['retinanet']
    self.assertEqual(retinanet['published_params_m'], 28.5)
    self.assertEqual(retinanet['published_multiply_adds_b'], 85.4)
    self.assertBetween(retinanet['params_m'], 28.3, 28.7)
    # 85.3B at 640 scales to 256 by (256/640)^2.
    self.assertBetween(retinanet['multiply_adds_b'], 85.0 * 0.16, 85.6 * 0.16)
    self.assertEqual(retinanet['breakdown']['backbone_params'], rows['backbone']['params'])
    self.assertBetween(rows['classification']['params_m'], 22.0, 22.2)


if __name__ == '__main__':
  tf.test.main()

"""Tests of the basic layers: activations, stochastic depth, blocks, resampling."""

import json

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import activations
from official_spinenet.modeling.layers import blocks
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import resample
from official_spinenet.modeling.layers import stochastic_depth


class ActivationTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    ('relu', [0.0, 0.0, 2.0]),
    ('hard_swish', [-0.0, -1.0 / 3.0, 2.0 * 5.0 / 6.0]),
    ('hard_sigmoid', [0.0, 1.0 / 3.0, 5.0 / 6.0]),
  )
  def test_values(self, name, expected):
    x = tf.constant([-4.0, -1.0, 2.0])
    self.assertAllClose(activations.get_activation(name)(x), expected)

  def test_swish(self):
    x = tf.constant([-1.0, 0.5])
    self.assertAllClose(activations.get_activation('swish')(x), x * tf.sigmoid(x))

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, "Unknown activation 'mish2'.*relu"):
      activations.get_activation('mish2')

  def test_factory_rejects_bad_activation_early(self):
    with self.assertRaisesRegex(ValueError, 'Unknown activation'):
      conv_norm_act.LayerFactory(activation='relux')


class StochasticDepthTest(tf.test.TestCase):
  def test_schedule_is_linear(self):
    rates = [stochastic_depth.get_stochastic_depth_rate(0.2, i, 16) for i in range(1, 17)]
    self.assertAllClose(rates, [0.2 * i / 16 for i in range(1, 17)])
    self.assertIsNone(stochastic_depth.get_stochastic_depth_rate(0.0, 3, 16))
    self.assertIsNone(stochastic_depth.get_stochastic_depth_rate(None, 3, 16))
    with self.assertRaisesRegex(ValueError, 'not in \\[0, 1\\]'):
      stochastic_depth.get_stochastic_depth_rate(1.5, 1, 16)

  def test_identity_at_inference(self):
    layer = stochastic_depth.StochasticDepth(0.5)
    x = tf.random.normal([8, 4, 4, 3])
    self.assertAllEqual(layer(x, training=False), x)

  def test_drops_whole_examples_and_keeps_the_mean(self):
    tf.random.set_seed(1)
    layer = stochastic_depth.StochasticDepth(0.3)
    x = tf.ones([4000, 2, 2, 3])
    y = layer(x, training=True).numpy()
    per_example = y.reshape(4000, -1)
    # Every example is either dropped whole or kept whole and scaled by 1/keep.
    self.assertTrue(np.all((per_example == 0).all(1) | np.isclose(per_example, 1 / 0.7).all(1)))
    self.assertNear(float((per_example[:, 0] == 0).mean()), 0.3, 0.03)
    self.assertNear(float(y.mean()), 1.0, 0.05)

  def test_bad_rate_and_config(self):
    with self.assertRaisesRegex(ValueError, 'drop_rate'):
      stochastic_depth.StochasticDepth(1.0)
    layer = stochastic_depth.StochasticDepth(0.25)
    self.assertEqual(
      stochastic_depth.StochasticDepth.from_config(layer.get_config()).get_config()['drop_rate'],
      0.25,
    )


class BlockTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    (blocks.BottleneckBlock, 16, 1, 64),
    (blocks.BottleneckBlock, 16, 2, 64),
    (blocks.ResidualBlock, 16, 2, 16),
    (blocks.ResidualBlock, 8, 1, 8),
  )
  def test_shapes(self, cls, filters, strides, out_channels):
    block = cls(filters=filters, strides=strides, use_projection=True)
    y = block(tf.zeros([2, 16, 16, 12]))
    self.assertEqual(y.shape, [2, 16 // strides, 16 // strides, out_channels])

  def test_identity_shortcut_has_no_projection_weights(self):
    block = blocks.BottleneckBlock(filters=4, use_projection=False)
    block(tf.zeros([1, 8, 8, 16]))
    self.assertFalse(hasattr(block, '_shortcut'))
    projected = blocks.BottleneckBlock(filters=4, use_projection=True)
    projected(tf.zeros([1, 8, 8, 16]))
    self.assertLen(projected.trainable_weights, len(block.trainable_weights) + 3)

  def test_config_round_trip(self):
    block = blocks.ResidualBlock(
      filters=8,
      strides=2,
      use_projection=True,
      stochastic_depth_drop_rate=0.1,
      activation='swish',
      kernel_regularizer=tf_keras.regularizers.l2(1e-4),
    )
    config = block.get_config()
    clone = blocks.ResidualBlock.from_config(config)
    self.assertEqual(clone.get_config()['activation'], 'swish')
    self.assertEqual(clone.get_config()['stochastic_depth_drop_rate'], 0.1)

  def test_config_is_json_and_untracked(self):
    block = blocks.BottleneckBlock(
      filters=4,
      kernel_regularizer=tf_keras.regularizers.l2(1e-4),
      kernel_initializer=tf_keras.initializers.HeNormal(),
    )
    config = json.loads(json.dumps(block.get_config()))
    clone = blocks.BottleneckBlock.from_config(config)
    self.assertEqual(clone.get_config(), config)
    x = tf.zeros([1, 8, 8, 16])
    block(x)
    clone(x)
    self.assertLen(clone.losses, len(block.losses))
    # The stored arguments add nothing to the checkpoint.
    self.assertNotIn('_stored_config', [name for name, _ in block._trackable_children().items()])

  def test_block_group_repeats(self):
    inputs = tf_keras.Input([16, 16, 24])
    out = blocks.block_group(inputs, 'bottleneck', 8, block_repeats=3)
    model = tf_keras.Model(inputs, out)
    block_layers = [l for l in model.layers if isinstance(l, blocks.BottleneckBlock)]
    self.assertLen(block_layers, 3)
    self.assertTrue(block_layers[0]._use_projection)
    self.assertFalse(block_layers[1]._use_projection)
    self.assertEqual(out.shape[-1], 32)
    with self.assertRaisesRegex(ValueError, 'block_repeats'):
      blocks.block_group(inputs, 'bottleneck', 8, block_repeats=0)


class ResampleTest(tf.test.TestCase, parameterized.TestCase):
  def test_nearest_upsampling(self):
    x = tf.reshape(tf.range(8, dtype=tf.float32), [1, 2, 2, 2])
    y = resample.NearestUpsampling(2)(x)
    self.assertAllEqual(y, tf.image.resize(x, [4, 4], method='nearest'))
    with self.assertRaisesRegex(ValueError, 'positive integer'):
      resample.NearestUpsampling(1.5)

  @parameterized.parameters(
    # (input level, target level, input block, target block, mid conv count)
    (3, 3, 'bottleneck', 'residual', 2),
    (3, 4, 'bottleneck', 'bottleneck', 3),
    (3, 6, 'residual', 'bottleneck', 3),
    (6, 3, 'residual', 'bottleneck', 2),
  )
  def test_resample_shapes_and_layers(self, level_in, level_out, fn_in, fn_out, num_convs):
    factory = conv_norm_act.LayerFactory()
    size = 128
    channels = 64 if fn_in == 'bottleneck' else 16
    inputs = tf_keras.Input([size // 2**level_in, size // 2**level_in, channels])
    out = resample.resample_with_alpha(
      inputs, size // 2**level_in, fn_in, size // 2**level_out, 16, fn_out, 0.5, factory
    )
    model = tf_keras.Model(inputs, out)
    expected_channels = 64 if fn_out == 'bottleneck' else 16
    self.assertEqual(out.shape[1:], [size // 2**level_out] * 2 + [expected_channels])
    convs = [l for l in model.layers if isinstance(l, tf_keras.layers.Conv2D)]
    self.assertLen(convs, num_convs)
    # alpha = 0.5 of the parent's block width (a bottleneck's is a quarter of its output).
    self.assertEqual(convs[0].filters, int((channels / (4 if fn_in == 'bottleneck' else 1)) * 0.5))
    pools = [l for l in model.layers if isinstance(l, tf_keras.layers.MaxPool2D)]
    self.assertLen(pools, max(0, level_out - level_in - 1))

"""SpineNet-Mobile: blocks, shapes, config, input checks and equality with the reference.

The reference is tf-models-official's `official.vision.modeling.backbones.
spinenet_mobile` (and its `nn_blocks.InvertedBottleneckBlock`), imported here only;
the package never imports it. Building a SpineNet-Mobile takes seconds on a small
CPU, so the full models are built once per module and shared by the tests, which
reset the weights they compare with.
"""

import json
import os

from absl.testing import parameterized
import numpy as np
from official.vision.modeling.backbones import spinenet_mobile as reference_spinenet_mobile
from official.vision.modeling.layers import nn_blocks as reference_nn_blocks
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import spinenet_mobile
from official_spinenet.modeling.backbones import spinenet_specs
from official_spinenet.modeling.layers import activations
from official_spinenet.modeling.layers import conv_norm_act
from official_spinenet.modeling.layers import mobile_blocks
from official_spinenet.modeling.layers import mobile_resample

LEVELS = [str(level) for level in range(3, 8)]
# (model id, input size) pairs the tests build.
CASES = {'49XS': 128, '49S': 128, '49': 256}
# A short custom architecture (one output block per level, straight from the stem):
# a quarter of the build time of the published one, for the tests that only need
# some SpineNet-Mobile.
SMALL_SPECS = [
  (3, 'mbconv', (0, 1), True),
  (4, 'mbconv', (1, 2), True),
  (5, 'mbconv', (2, 3), True),
  (6, 'mbconv', (3, 4), True),
  (7, 'mbconv', (4, 5), True),
]

_OURS = {}
_REFERENCES = {}


def _ours(model_id):
  if model_id not in _OURS:
    size = CASES[model_id]
    _OURS[model_id] = spinenet_mobile.build_spinenet_mobile(
      model_id, input_specs=[None, size, size, 3]
    )
  return _OURS[model_id]


def _reference(model_id):
  """The reference model and the random weights the comparisons load into it."""
  if model_id not in _REFERENCES:
    size = CASES[model_id]
    scaling = reference_spinenet_mobile.SCALING_MAP[model_id]
    model = reference_spinenet_mobile.SpineNetMobile(
      input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
      endpoints_num_filters=scaling['endpoints_num_filters'],
      filter_size_scale=scaling['filter_size_scale'],
      block_repeats=scaling['block_repeats'],
      se_ratio=0.2,
      expand_ratio=6,
    )
    _REFERENCES[model_id] = (model, _random_weights(model.weights))
  return _REFERENCES[model_id]


def _random_weights(variables, seed=0):
  """Kernels He-normal (N(0, sqrt(2 / fan_in))); BN gamma ~1, beta/mean small,
  moving variance in [0.5, 1.5]; biases small."""
  rng = np.random.default_rng(seed)
  values = []
  for v in variables:
    shape, name = v.shape.as_list(), v.name
    if 'depthwise_kernel' in name:
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:2]))
    elif 'kernel' in name:
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif 'moving_variance' in name:
      value = rng.uniform(0.5, 1.5, size=shape)
    elif 'gamma' in name:
      value = rng.uniform(0.8, 1.2, size=shape)
    else:  # beta, moving_mean, bias
      value = rng.normal(size=shape) * 0.1
    values.append(value.astype(v.dtype.as_numpy_dtype))
  return values


def _trainable_count(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _max_difference(reference_outputs, outputs):
  """(max |ours - ref|, max |ref|) over all endpoints."""
  diff = max(float(np.max(np.abs(reference_outputs[k] - outputs[k]))) for k in reference_outputs)
  scale = max(float(np.max(np.abs(reference_outputs[k]))) for k in reference_outputs)
  return diff, scale


class MakeDivisibleTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    (144, 1, 144), (2.8, 1, 3), (2.2, 1, 2), (0.2, 1, 1), (10, 8, 16), (36, 8, 40), (100, 8, 104)
  )
  def test_values(self, value, divisor, expected):
    self.assertEqual(mobile_blocks.make_divisible(value, divisor), expected)

  def test_round_down_protect(self):
    # int(2.4 + 0.5) = 2 loses more than 10% of 2.4, so one divisor is added back.
    self.assertEqual(mobile_blocks.make_divisible(2.4, 1), 3)
    self.assertEqual(mobile_blocks.make_divisible(2.4, 1, round_down_protect=False), 2)


class InvertedBottleneckBlockTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    (8, 16, 2, [2, 8, 8, 16]), (8, 8, 1, [2, 16, 16, 8]), (9, 14, 1, [2, 16, 16, 14])
  )
  def test_output_shape(self, in_filters, out_filters, strides, expected):
    block = mobile_blocks.InvertedBottleneckBlock(
      in_filters, out_filters, expand_ratio=6, strides=strides, se_ratio=0.2
    )
    self.assertEqual(block(tf.zeros([2, 16, 16, in_filters])).shape, expected)
    self.assertEqual(block.compute_output_shape([2, 16, 16, in_filters]), expected)

  def test_widths_and_sub_layers(self):
    block = mobile_blocks.InvertedBottleneckBlock(14, 14, expand_ratio=6, strides=1, se_ratio=0.2)
    block(tf.zeros([1, 8, 8, 14]))
    self.assertEqual(block._conv0.kernel.shape, [1, 1, 14, 84])
    self.assertEqual(block._conv1.depthwise_kernel.shape, [3, 3, 84, 1])
    # SE bottleneck: int(in_filters * se_ratio) = int(2.8) = 2 channels, with bias.
    se = block._squeeze_excitation
    self.assertIsInstance(se, mobile_blocks.SqueezeExcitation)
    self.assertEqual(se._se_reduce.kernel.shape, [1, 1, 84, 2])
    self.assertEqual(se._se_reduce.bias.shape, [2])
    self.assertEqual(se._se_expand.kernel.shape, [1, 1, 2, 84])
    self.assertEqual(block._conv2.kernel.shape, [1, 1, 84, 14])
    self.assertLen(block.weights, 3 + 3 * 4 + 4)  # 3 kernels, 3 BNs, SE kernels + biases.

  def test_no_expansion_and_no_se(self):
    block = mobile_blocks.InvertedBottleneckBlock(8, 8, expand_ratio=1, strides=1, se_ratio=None)
    block(tf.zeros([1, 8, 8, 8]))
    self.assertFalse(hasattr(block, '_conv0'))
    self.assertIsNone(block._squeeze_excitation)
    self.assertEqual(block._conv1.depthwise_kernel.shape, [3, 3, 8, 1])
    self.assertLen(block.weights, 2 + 2 * 4)

  @parameterized.parameters((8, 8, 1, True), (8, 16, 1, False), (8, 8, 2, False))
  def test_residual_only_when_shapes_match(self, in_filters, out_filters, strides, residual):
    block = mobile_blocks.InvertedBottleneckBlock(
      in_filters, out_filters, expand_ratio=6, strides=strides, se_ratio=0.2
    )
    x = tf.random.normal([2, 8, 8, in_filters])
    block(x)
    self.assertEqual(block.has_residual, residual)
    # A zero projection BN zeroes the branch: the output is the input or zeros.
    block._norm2.gamma.assign(tf.zeros_like(block._norm2.gamma))
    y = block(x, training=False)
    if residual:
      self.assertAllClose(y, x)
    else:
      self.assertAllEqual(y, tf.zeros_like(y))

  def test_squeeze_excitation_gate(self):
    se = mobile_blocks.SqueezeExcitation(in_filters=10, out_filters=12, se_ratio=0.25)
    x = tf.random.normal([2, 5, 5, 12])
    se(x)
    self.assertEqual(se.num_reduced_filters, 2)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in se.get_weights()]
    se.set_weights(weights)
    w1, b1, w2, b2 = weights
    pooled = np.mean(x.numpy(), axis=(1, 2))
    hidden = np.maximum(pooled @ w1[0, 0] + b1, 0.0)
    gate = np.clip(hidden @ w2[0, 0] + b2 + 3.0, 0.0, 6.0) / 6.0
    self.assertAllClose(se(x), x.numpy() * gate[:, None, None, :], atol=1e-5)

  def test_stochastic_depth_is_identity_at_inference(self):
    kwargs = dict(in_filters=8, out_filters=8, expand_ratio=6, strides=1, se_ratio=0.2)
    dropping = mobile_blocks.InvertedBottleneckBlock(stochastic_depth_drop_rate=0.5, **kwargs)
    plain = mobile_blocks.InvertedBottleneckBlock(**kwargs)
    x = tf.random.normal([16, 4, 4, 8])
    dropping(x)
    plain(x)
    plain.set_weights(dropping.get_weights())
    self.assertAllClose(dropping(x, training=False), plain(x, training=False))
    # In training each example keeps the input and either drops the branch or
    # scales it by 1 / keep_prob.
    branch = (plain(x, training=True) - x).numpy()
    y = (dropping(x, training=True) - x).numpy()
    for i in range(16):
      dropped = np.allclose(y[i], 0.0, atol=1e-5)
      self.assertTrue(dropped or np.allclose(y[i], 2.0 * branch[i], atol=1e-4))

  def test_config_round_trip(self):
    block = mobile_blocks.InvertedBottleneckBlock(
      8,
      16,
      expand_ratio=4,
      strides=2,
      se_ratio=0.25,
      stochastic_depth_drop_rate=0.1,
      kernel_regularizer=tf_keras.regularizers.l2(1e-4),
      activation='hard_swish',
    )
    config = block.get_config()
    clone = mobile_blocks.InvertedBottleneckBlock.from_config(config)
    self.assertEqual(clone.get_config(), config)
    block(tf.zeros([1, 8, 8, 8]))
    clone(tf.zeros([1, 8, 8, 8]))
    self.assertEqual([w.shape for w in clone.weights], [w.shape for w in block.weights])
    self.assertLen(clone.losses, len(block.losses))
    se = mobile_blocks.SqueezeExcitation(4, 24, 0.25)
    self.assertEqual(
      mobile_blocks.SqueezeExcitation.from_config(se.get_config()).get_config(), se.get_config()
    )

  def test_wrong_input_channels(self):
    block = mobile_blocks.InvertedBottleneckBlock(8, 8, expand_ratio=6, strides=1)
    with self.assertRaisesRegex(ValueError, 'expects 8 input channels, got 5'):
      block(tf.zeros([1, 4, 4, 5]))

  @parameterized.parameters((14, 14, 1), (9, 14, 2))
  def test_equal_to_reference_block(self, in_filters, out_filters, strides):
    """Same checkpoint keys and the same outputs as nn_blocks.InvertedBottleneckBlock."""
    kwargs = dict(
      in_filters=in_filters, out_filters=out_filters, expand_ratio=6, strides=strides, se_ratio=0.2
    )
    reference = reference_nn_blocks.InvertedBottleneckBlock(
      se_gating_activation='hard_sigmoid', **kwargs
    )
    ours = mobile_blocks.InvertedBottleneckBlock(
      se_gating_activation='hard_sigmoid_rounded', **kwargs
    )
    x = tf.random.normal([2, 8, 8, in_filters])
    reference(x)
    ours(x)
    reference.set_weights(_random_weights(reference.weights))
    ours.set_weights(reference.get_weights())
    for training in (False, True):
      self.assertAllClose(
        ours(x, training=training), reference(x, training=training), atol=1e-5, rtol=1e-5
      )
    paths = [
      tf.train.Checkpoint(block=layer).write(os.path.join(self.get_temp_dir(), n))
      for n, layer in (('reference', reference), ('ours', ours))
    ]
    keys = [tf.train.list_variables(p) for p in paths]
    self.assertEqual(keys[0], keys[1])
    self.assertIn(
      'block/_squeeze_excitation/_se_reduce/kernel/.ATTRIBUTES/VARIABLE_VALUE', dict(keys[1])
    )


class MobileResampleTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters((32, 8, 2), (8, 32, 0), (16, 16, 0))
  def test_shapes_and_layers(self, input_width, target_width, num_depthwise):
    inputs = tf_keras.Input([input_width, input_width, 6])
    outputs = mobile_resample.resample_depthwise(
      inputs, input_width, target_width, 10, conv_norm_act.LayerFactory()
    )
    model = tf_keras.Model(inputs, outputs)
    self.assertEqual(outputs.shape, [None, target_width, target_width, 10])
    depthwise = [l for l in model.layers if isinstance(l, tf_keras.layers.DepthwiseConv2D)]
    self.assertLen(depthwise, num_depthwise)
    self.assertTrue(all(l.strides == (2, 2) for l in depthwise))
    y = model(tf.random.normal([1, input_width, input_width, 6]))
    self.assertEqual(y.shape, [1, target_width, target_width, 10])


class SpineNetMobileTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters('49XS', '49S', '49')
  def test_endpoint_shapes(self, model_id):
    size = CASES[model_id]
    model = _ours(model_id)
    filters = spinenet_specs.SPINENET_MOBILE_SCALING[model_id].endpoints_num_filters
    endpoints = model(tf.zeros([1, size, size, 3]), training=False)
    self.assertEqual(sorted(endpoints), LEVELS)
    shapes = {str(l): [size // 2**l, size // 2**l, filters] for l in range(3, 8)}
    self.assertEqual(
      {k: x.shape.as_list() for k, x in endpoints.items()},
      {k: [1] + shape for k, shape in shapes.items()},
    )
    self.assertEqual(
      {k: s.as_list() for k, s in model.output_specs.items()},
      {k: [None] + shape for k, shape in shapes.items()},
    )

  def test_config_round_trip(self):
    kwargs = dict(
      input_specs=[None, 128, 128, 3],
      min_level=3,
      max_level=7,
      block_specs=[spinenet_specs.BlockSpec.from_any(s).to_dict() for s in SMALL_SPECS],
      endpoints_num_filters=16,
      se_ratio=0.25,
      expand_ratio=4,
      filter_size_scale=0.5,
      init_stochastic_depth_rate=0.2,
      kernel_initializer='he_normal',
      kernel_regularizer=tf_keras.regularizers.l2(4e-5),
      bias_regularizer=None,
      activation='swish',
      use_sync_bn=False,
      norm_momentum=0.97,
      norm_epsilon=1e-4,
    )
    model = spinenet_mobile.SpineNetMobile(**kwargs)
    # get_config serializes the regularizer; from_config turns it back.
    expected = dict(
      kwargs, kernel_regularizer=tf_keras.regularizers.serialize(kwargs['kernel_regularizer'])
    )
    self.assertEqual(model.get_config(), expected)
    self.assertEqual(json.loads(model.to_json())['config'], expected)
    clone = spinenet_mobile.SpineNetMobile.from_config(model.get_config())
    self.assertEqual(clone.get_config(), model.get_config())
    self.assertEqual(clone.count_params(), model.count_params())
    self.assertEqual([w.shape for w in clone.weights], [w.shape for w in model.weights])
    self.assertNotEmpty(model.losses)
    self.assertLen(clone.losses, len(model.losses))
    # Stochastic depth: none in the stem, init * i / N for block i of the N specs.
    rates = [
      l.get_config()['stochastic_depth_drop_rate']
      for l in model.layers
      if isinstance(l, mobile_blocks.InvertedBottleneckBlock)
    ]
    self.assertEqual(rates.count(None), 2)
    self.assertAllClose(
      sorted(r for r in rates if r is not None), [0.2 * i / 5 for i in range(1, 6)]
    )

  def test_dynamic_and_non_square_input(self):
    model = spinenet_mobile.SpineNetMobile(
      block_specs=SMALL_SPECS, filter_size_scale=0.5, endpoints_num_filters=16
    )
    endpoints = model(tf.zeros([1, 128, 256, 3]))
    self.assertEqual(endpoints['7'].shape, [1, 1, 2, 16])
    self.assertEqual(endpoints['3'].shape, [1, 16, 32, 16])
    with self.assertRaisesRegex(ValueError, 'input height 96 is not divisible'):
      model(tf.zeros([1, 96, 128, 3]))
    with self.assertRaises(ValueError):  # Keras' own check of a static model.
      _ours('49XS')(tf.zeros([1, 96, 128, 3]))

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'not divisible by 2\\^max_level = 128'):
      spinenet_mobile.SpineNetMobile(input_specs=[None, 200, None, 3])
    with self.assertRaisesRegex(ValueError, 'divisible'):
      spinenet_mobile.build_spinenet_mobile('49XS', input_specs=[None, 192, None, 3])
    with self.assertRaisesRegex(
      ValueError, "Unknown SpineNet-Mobile model_id '50'.*'49', '49S', '49XS'"
    ):
      spinenet_mobile.build_spinenet_mobile('50')
    bad_specs = list(spinenet_specs.SPINENET_MOBILE_BLOCK_SPECS)
    bad_specs[3] = (3, 'bottleneck', (3, 4), False)
    with self.assertRaisesRegex(ValueError, "Block spec 3 has block_fn 'bottleneck'"):
      spinenet_mobile.SpineNetMobile(block_specs=bad_specs)
    bad_specs[3] = (3, 'mbconv', (3, 9), False)
    with self.assertRaisesRegex(ValueError, 'Block spec 3 has parent 9'):
      spinenet_mobile.SpineNetMobile(block_specs=bad_specs)
    with self.assertRaisesRegex(ValueError, 'filter_size_scale'):
      spinenet_mobile.SpineNetMobile(filter_size_scale=0.1)

  def test_hard_sigmoid_constant(self):
    x = tf.constant([-4.0, 0.0, 1.0, 4.0])
    self.assertAllClose(
      activations.get_activation('hard_sigmoid_rounded')(x),
      [0.0, 0.5 * 1.00002, 4.0 * 0.16667, 1.00002],
      atol=1e-7,
    )


class SpineNetMobileReferenceTest(tf.test.TestCase, parameterized.TestCase):
  """Same weights in, same endpoints out, as tf-models-official's SpineNetMobile."""

  @parameterized.parameters('49XS', '49S', '49')
  def test_equal_to_reference(self, model_id):
    size = CASES[model_id]
    reference, weights = _reference(model_id)
    ours = _ours(model_id)
    self.assertEqual(_trainable_count(ours), _trainable_count(reference))
    self.assertEqual(ours.count_params(), reference.count_params())
    self.assertEqual([w.shape for w in ours.weights], [w.shape for w in reference.weights])
    x = tf.random.stateless_uniform([2, size, size, 3], seed=[1, 2], minval=-1, maxval=1)
    for training in (False, True):
      reference.set_weights(weights)  # A training call moves the BN statistics.
      ours.set_weights(weights)
      diff, scale = _max_difference(reference(x, training=training), ours(x, training=training))
      self.assertLessEqual(diff, 1e-4 * scale, f'SpineNet-Mobile-{model_id} training={training}')

  def test_checkpoint_layout_equals_reference(self):
    """A checkpoint the reference writes restores into ours, variable for variable."""
    reference, weights = _reference('49XS')
    ours = _ours('49XS')
    reference.set_weights(weights)
    ours.set_weights(_random_weights(ours.weights, seed=7))
    path = tf.train.Checkpoint(backbone=reference).write(
      os.path.join(self.get_temp_dir(), 'reference')
    )
    ours_path = tf.train.Checkpoint(backbone=ours).write(os.path.join(self.get_temp_dir(), 'ours'))
    self.assertEqual(tf.train.list_variables(path), tf.train.list_variables(ours_path))
    status = tf.train.Checkpoint(backbone=ours).read(path)
    status.assert_existing_objects_matched()
    status.assert_consumed()
    x = tf.random.stateless_uniform([1, 128, 128, 3], seed=[3, 4], minval=-1, maxval=1)
    expected = reference(x, training=False)
    diff, scale = _max_difference(expected, ours(x, training=False))
    self.assertLessEqual(diff, 1e-4 * scale)
    # Our architecture does not depend on the input size (the reference's does when
    # the size is dynamic), so the checkpoint also restores into a dynamic model.
    dynamic = spinenet_mobile.build_spinenet_mobile('49XS')
    tf.train.Checkpoint(backbone=dynamic).read(path).assert_consumed()
    diff, scale = _max_difference(expected, dynamic(x, training=False))
    self.assertLessEqual(diff, 1e-4 * scale)


if __name__ == '__main__':
  tf.test.main()

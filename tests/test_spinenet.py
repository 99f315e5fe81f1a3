"""SpineNet: shapes, serialization, input checks and equality with the reference.

The reference is tf-models-official's `official.vision.modeling.backbones.spinenet`,
imported here only; the package never imports it.
"""

import json
import os

from absl.testing import parameterized
import numpy as np
from official.vision.modeling.backbones import spinenet as reference_spinenet
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.backbones import spinenet_specs
from tests import reference_utils


def _reference(model_id, size, **kwargs):
  return reference_spinenet.SpineNet(
    input_specs=tf_keras.layers.InputSpec(shape=[None, size, size, 3]),
    **reference_spinenet.SCALING_MAP[model_id],
    **kwargs,
  )


def _trainable_count(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


class SpineNetShapeTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    # (input size, filter scale, block repeats, alpha, endpoint filters, min, max)
    (128, 0.65, 1, 0.5, 128, 4, 6),
    (256, 1.0, 1, 0.5, 256, 3, 6),
    (128, 0.5, 2, 0.5, 64, 4, 7),
    (128, 0.5, 1, 1.0, 32, 3, 7),
  )
  def test_endpoint_shapes(self, size, scale, repeats, alpha, filters, min_level, max_level):
    model = spinenet.SpineNet(
      input_specs=[None, size, size, 3],
      min_level=min_level,
      max_level=max_level,
      endpoints_num_filters=filters,
      resample_alpha=alpha,
      block_repeats=repeats,
      filter_size_scale=scale,
      init_stochastic_depth_rate=0.2,
    )
    endpoints = model(tf.zeros([1, size, size, 3]), training=True)
    self.assertEqual(sorted(endpoints), [str(l) for l in range(min_level, max_level + 1)])
    shapes = {
      str(l): [size // 2**l, size // 2**l, filters] for l in range(min_level, max_level + 1)
    }
    self.assertEqual(
      {k: x.shape.as_list() for k, x in endpoints.items()},
      {k: [1] + shape for k, shape in shapes.items()},
    )
    self.assertEqual(
      {k: s.as_list() for k, s in model.output_specs.items()},
      {k: [None] + shape for k, shape in shapes.items()},
    )

  def test_dynamic_and_non_square_input(self):
    model = spinenet.SpineNet(filter_size_scale=0.25, endpoints_num_filters=16)
    endpoints = model(tf.zeros([1, 256, 384, 3]))
    self.assertEqual(endpoints['7'].shape, [1, 2, 3, 16])
    self.assertEqual(endpoints['3'].shape, [1, 32, 48, 16])


class SpineNetConfigTest(tf.test.TestCase):
  def test_get_config_returns_constructor_arguments(self):
    kwargs = dict(
      input_specs=[None, 128, 128, 3],
      min_level=3,
      max_level=7,
      block_specs=[s.to_dict() for s in spinenet_specs.build_block_specs()],
      endpoints_num_filters=32,
      resample_alpha=0.5,
      block_repeats=1,
      filter_size_scale=0.25,
      init_stochastic_depth_rate=0.2,
      kernel_initializer='VarianceScaling',
      kernel_regularizer=None,
      bias_regularizer=None,
      activation='swish',
      use_sync_bn=False,
      norm_momentum=0.99,
      norm_epsilon=0.001,
    )
    model = spinenet.SpineNet(**kwargs)
    self.assertEqual(model.get_config(), kwargs)
    clone = spinenet.SpineNet.from_config(model.get_config())
    self.assertEqual(clone.get_config(), model.get_config())
    self.assertEqual(clone.count_params(), model.count_params())
    self.assertEqual(json.loads(model.to_json())['config'], kwargs)

  def test_regularizer_round_trip(self):
    model = spinenet.SpineNet(
      filter_size_scale=0.25,
      endpoints_num_filters=16,
      kernel_regularizer=tf_keras.regularizers.l2(2e-5),
    )
    clone = spinenet.SpineNet.from_config(model.get_config())
    self.assertLen(clone.losses, len(model.losses))
    self.assertNotEmpty(model.losses)

  def test_block_specs_from_json_path(self):
    path = os.path.join(self.get_temp_dir(), 'arch.json')
    spinenet_specs.save_block_specs(spinenet_specs.build_block_specs(), path)
    from_file = spinenet.SpineNet(
      block_specs=path, filter_size_scale=0.25, endpoints_num_filters=16
    )
    default = spinenet.SpineNet(filter_size_scale=0.25, endpoints_num_filters=16)
    self.assertEqual(from_file.count_params(), default.count_params())
    self.assertEqual(from_file.get_config(), default.get_config())

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'Unknown activation'):
      spinenet.SpineNet(activation='gelu2')
    with self.assertRaisesRegex(ValueError, 'not divisible by 2\\^max_level = 128'):
      spinenet.SpineNet(input_specs=[None, 200, None, 3])
    with self.assertRaisesRegex(ValueError, "Unknown SpineNet model_id '48'"):
      spinenet.build_spinenet('48')
    bad_specs = list(spinenet_specs.SPINENET_BLOCK_SPECS)
    bad_specs[2] = (3, 'bottleneck', (2, 9), False)
    with self.assertRaisesRegex(ValueError, 'Block spec 2 has parent 9'):
      spinenet.SpineNet(block_specs=bad_specs)

  def test_bad_input_size_at_call(self):
    model = spinenet.SpineNet(filter_size_scale=0.25, endpoints_num_filters=16)
    with self.assertRaisesRegex(ValueError, 'input height 100 is not divisible'):
      model(tf.zeros([1, 100, 128, 3]))

  def test_checkpoint_restores_across_input_sizes(self):
    small = spinenet.SpineNet(
      input_specs=[None, 128, 128, 3], filter_size_scale=0.25, endpoints_num_filters=16
    )
    small.set_weights(reference_utils.random_weights(small.get_weights()))
    path = tf.train.Checkpoint(backbone=small).write(os.path.join(self.get_temp_dir(), 'c'))
    for shape in ([None, 384, 640, 3], [None, None, None, 3]):
      other = spinenet.SpineNet(input_specs=shape, filter_size_scale=0.25, endpoints_num_filters=16)
      tf.train.Checkpoint(backbone=other).read(path).assert_consumed()
      x = tf.random.uniform([1, 128, 128, 3])
      if shape[1] is None:
        self.assertAllClose(other(x)['5'], small(x)['5'])


class SpineNetReferenceTest(tf.test.TestCase, parameterized.TestCase):
  """Same weights in, same endpoints out, as tf-models-official's SpineNet."""

  def _compare(self, model_id, size=128):
    reference = _reference(model_id, size)
    ours = spinenet.build_spinenet(model_id, input_specs=[None, size, size, 3])
    self.assertEqual(_trainable_count(ours), _trainable_count(reference))
    self.assertEqual([w.shape for w in ours.weights], [w.shape for w in reference.weights])
    reference.set_weights(reference_utils.random_weights(reference.get_weights()))
    ours.set_weights(reference.get_weights())
    x = tf.random.stateless_uniform([2, size, size, 3], seed=[1, 2], minval=-1, maxval=1)
    for training in (False, True):
      difference = reference_utils.max_relative_difference(
        reference(x, training=training), ours(x, training=training)
      )
      self.assertLessEqual(difference, 1e-4, f'SpineNet-{model_id} training={training}')

  @parameterized.parameters('49S', '49')
  def test_equal_to_reference(self, model_id):
    self._compare(model_id)

  @pytest.mark.slow
  @parameterized.parameters('96', '143', '190')
  def test_equal_to_reference_large(self, model_id):
    self._compare(model_id)

  def test_checkpoint_layout_equals_reference(self):
    """A checkpoint the reference writes restores into ours, variable for variable."""
    reference = _reference('49S', 128)
    reference.set_weights(reference_utils.random_weights(reference.get_weights(), seed=3))
    path = tf.train.Checkpoint(backbone=reference).write(
      os.path.join(self.get_temp_dir(), 'reference')
    )
    ours = spinenet.build_spinenet('49S', input_specs=[None, 128, 128, 3])
    ours_path = tf.train.Checkpoint(backbone=ours).write(os.path.join(self.get_temp_dir(), 'ours'))
    self.assertEqual(
      dict(tf.train.list_variables(path)).keys(), dict(tf.train.list_variables(ours_path)).keys()
    )
    tf.train.Checkpoint(backbone=ours).read(path).assert_consumed()
    x = tf.random.uniform([1, 128, 128, 3])
    self.assertLessEqual(reference_utils.max_relative_difference(reference(x), ours(x)), 1e-4)

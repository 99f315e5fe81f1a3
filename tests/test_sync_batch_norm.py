"""Our BatchNormalization: sync statistics equal to one device's, tf_keras's layer otherwise."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import batch_norm
from official_spinenet.modeling.layers import conv_norm_act
from tests import paths

ENV = dict(os.environ, PYTHONPATH=paths.REPO, TF_CPP_MIN_LOG_LEVEL='2')


@pytest.fixture(scope='module')
def two_cpus(tmp_path_factory):
  """tests/sync_batch_norm_runs.py's errors against float64 one-device truth, by run."""
  output = tmp_path_factory.mktemp('sync_bn') / 'results.json'
  run = subprocess.run(
    [sys.executable, os.path.join(paths.REPO, 'tests', 'sync_batch_norm_runs.py'), str(output)],
    capture_output=True,
    text=True,
    env=ENV,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(output.read_text())


@pytest.mark.parametrize('kind', ['bn', 'conv_bn'])
@pytest.mark.parametrize('dtype, tolerance', [('float32', 2e-4), ('float64', 1e-12)])
def test_mirrored_equals_one_device(two_cpus, kind, dtype, tolerance):
  # Channels of mean 100 and stddev 1, a global batch of 5 split 3 + 2:
  # outputs, gradients and moving statistics of the global batch, to rounding.
  for strategy in ('one_device', 'mirrored'):
    errors = two_cpus[f'ours/{kind}/{dtype}/{strategy}']
    assert errors['replica_spread'] == 0.0
    for name in ('outputs', 'gradients', 'moving_statistics'):
      assert errors[name] <= tolerance, (strategy, name, errors)


def test_tf_keras_sync_variance_cancels(two_cpus):
  # What our layer works around: tf_keras's synchronized BN takes the variance as
  # E[x^2] - E[x]^2, which cancels in float32 at mean / stddev = 100, on one
  # device as across replicas. If this fails, tf_keras has changed its formula.
  for strategy in ('one_device', 'mirrored'):
    keras, ours = (
      two_cpus[f'tf_keras/bn/float32/{strategy}'],
      two_cpus[f'ours/bn/float32/{strategy}'],
    )
    for name in ('outputs', 'gradients', 'moving_statistics'):
      assert keras[name] > 1e-3 and keras[name] > 20 * ours[name], (strategy, name)


def _training_pass(layer, x):
  """(outputs, d sum(outputs * w) / d [x, gamma, beta]) in training mode."""
  x = tf.convert_to_tensor(x)
  w = tf.cast(tf.reshape(tf.range(tf.size(x)) % 7, x.shape), x.dtype)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
    loss = tf.reduce_sum(y * w)
  return [y] + tape.gradient(loss, [x, layer.gamma, layer.beta])


def test_one_replica_is_tf_nn_moments():
  # Without a strategy (one replica) the synchronized layer takes tf_keras's
  # unsynchronized statistics, bit for bit: use_sync_bn changes nothing there.
  x = 100.0 + np.random.default_rng(0).standard_normal([4, 5, 5, 3]).astype(np.float32)
  ours = batch_norm.BatchNormalization(synchronized=True, momentum=0.0)
  keras = tf_keras.layers.BatchNormalization(fused=False, momentum=0.0)
  for a, b in zip(_training_pass(ours, x), _training_pass(keras, x)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(ours.weights, keras.weights):
    np.testing.assert_array_equal(a, b)


def test_global_moments_masked_and_half_precision():
  context = tf.distribute.get_replica_context()
  rng = np.random.default_rng(1)
  x = 100.0 + rng.standard_normal([3, 4, 4, 2])
  mask = rng.random([3, 4, 4]) > 0.3
  mean, variance = batch_norm.global_moments(tf.constant(x), [0, 1, 2], False, context, mask)
  np.testing.assert_allclose(mean, x[mask].mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(variance, x[mask].var(axis=0), rtol=1e-10)
  # float16: x^2 would overflow (100^2 * 48 > 65504); statistics in float32.
  mean, variance = batch_norm.global_moments(tf.constant(x, tf.float16), [0, 1, 2], True, context)
  assert mean.dtype == tf.float16 and mean.shape == (1, 1, 1, 2)
  x16 = x.astype(np.float16).astype(np.float64)
  np.testing.assert_allclose(mean[0, 0, 0], x16.mean(axis=(0, 1, 2)), rtol=1e-3)
  np.testing.assert_allclose(variance[0, 0, 0], x16.var(axis=(0, 1, 2)), rtol=1e-2)


def test_names_config_and_checkpoints_are_tf_keras(tmp_path):
  factory = conv_norm_act.LayerFactory(use_sync_bn=True)
  ours, keras = factory.norm(), tf_keras.layers.BatchNormalization(synchronized=True)
  assert isinstance(ours, batch_norm.BatchNormalization)
  assert ours.name.startswith('batch_normalization')  # Keras's automatic names
  config = ours.get_config()
  # tf_keras's config leaves `synchronized` out; ours keeps it.
  assert 'synchronized' not in keras.get_config()
  assert {**config, 'name': None} == {**keras.get_config(), 'name': None, 'synchronized': True}
  unsynced = conv_norm_act.LayerFactory().norm().get_config()
  assert {**unsynced, 'name': None} == {**keras.get_config(), 'name': None}
  assert batch_norm.BatchNormalization.from_config(config).get_config() == config
  restored = tf_keras.layers.deserialize(tf_keras.layers.serialize(ours))
  assert type(restored) is batch_norm.BatchNormalization and restored.synchronized
  ours.build([None, 3])
  keras.build([None, 3])
  assert [w.name.split('/')[-1] for w in ours.weights] == [
    w.name.split('/')[-1] for w in keras.weights
  ]
  # A checkpoint of tf_keras's layer restores into ours.
  for i, w in enumerate(keras.weights):
    w.assign(np.full([3], i + 1.0))
  path = tf.train.Checkpoint(layer=keras).write(str(tmp_path / 'bn'))
  tf.train.Checkpoint(layer=ours).read(path).assert_consumed()
  for a, b in zip(ours.weights, keras.weights):
    np.testing.assert_array_equal(a, b)

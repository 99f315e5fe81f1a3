"""Op time by kind, read from the TensorFlow profiler's trace."""

import pytest
import tensorflow as tf

from official_spinenet.utils import op_profile
from official_spinenet.workflows import train_throughput


@pytest.mark.parametrize(
  'op_type, kind',
  [
    ('Conv2D', 'convolution'),
    ('_MklNativeFusedConv2D', 'convolution'),
    ('_MklNativeConv2DBackpropFilterWithBias', 'convolution'),
    ('Conv2DBackpropInput', 'convolution'),
    ('DepthwiseConv2dNative', 'convolution'),
    ('_FusedBatchNormEx', 'FusedBatchNormEx'),
    ('FusedBatchNormGradV3', 'FusedBatchNormGradV3'),
    ('_MklNativeFusedMatMul', 'FusedMatMul'),
    ('AddV2', 'AddV2'),
  ],
)
def test_op_kinds_fold_onednn_kernels_into_what_they_compute(op_type, kind):
  assert op_profile.op_kind(op_type) == kind


def test_a_convolution_step_is_mostly_convolution_time():
  kernel = tf.random.uniform([3, 3, 32, 32], seed=0)
  images = tf.random.uniform([4, 64, 64, 32], seed=1)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(kernel)
      features = tf.nn.conv2d(images, kernel, 1, 'SAME')
      loss = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(features, kernel, 1, 'SAME')))
    return tape.gradient(loss, kernel)

  step()
  seconds = op_profile.op_seconds(step)
  assert seconds[op_profile.CONVOLUTION] > 0.5 * sum(seconds.values()), seconds
  assert 'ReluGrad' in seconds


def test_ratio_ceiling_and_table_from_op_times():
  ours = train_throughput.Throughput(2.0, 1.0, 10, {'convolution': 3.0, 'Mul': 1.0})
  theirs = train_throughput.Throughput(2.4, 0.8, 10, {'convolution': 3.0, 'Mul': 2.0})
  assert ours.convolution_share == 0.75
  assert train_throughput.ratio_ceiling(ours, theirs) == pytest.approx(2.4 / 1.5)
  rows = train_throughput.op_time_rows(ours, theirs, top=1)
  assert rows == [
    ('convolution', 3.0, 3.0, 0.75),
    ('(other kinds)', 1.0, 2.0, 0.25),
    ('total op time', 4.0, 5.0, 1.0),
  ]

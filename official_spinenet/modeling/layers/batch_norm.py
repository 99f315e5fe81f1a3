"""Batch normalization whose synchronized statistics equal one device's.

tf_keras's `BatchNormalization(synchronized=True)` all-reduces sum(x) and
sum(x^2) and takes the variance as E[x^2] - E[x]^2. In float32 that difference
cancels when mean^2 >> variance: its rounding error is ~eps * E[x^2] / variance
relative to the variance, so a channel whose mean is 100 standard deviations
gives normalized outputs and gradients wrong by ~0.5%, differently for every
summation order (one device, two replicas). The same layer without
`synchronized` uses `tf.nn.moments`: the mean of squared deviations from the
mean, accurate to float32 rounding. This layer does that across replicas: it
all-reduces sum(x) and the count for the global mean, then the sum of squared
deviations from that mean (two all-reduces, as many as the one-pass formula).

Only the statistics differ: variables, their names (`batch_normalization_N/gamma`
and so on: the class keeps Keras's name) and the inference path are tf_keras's,
so checkpoints written with either layer load into the other. `get_config` is
tf_keras's plus `synchronized`, which tf_keras's leaves out (its layer comes
back from its config unsynchronized).
"""

import tensorflow as tf
import tf_keras

# Statistics of narrower floats are taken in float32 (sums of squares overflow
# float16 and lose all precision in bfloat16).
_STATISTICS_DTYPES = (tf.float16, tf.bfloat16)


def global_moments(x, reduction_axes, keep_dims, replica_context, mask=None):
  """Mean and variance of x over reduction_axes and over all replicas' batches.

  Args:
    x: a replica's inputs, e.g. [local_batch, height, width, channels].
    reduction_axes: the axes to reduce, e.g. [0, 1, 2].
    keep_dims: whether the reduced axes stay (size 1) in the results.
    replica_context: the `tf.distribute.ReplicaContext` to all-reduce over.
    mask: optional [local_batch, ...] weights (x's shape without the channel
      axis): 0 leaves an element out of the statistics.

  Returns:
    (mean, variance) of x's dtype, [channels] (or x's rank with keep_dims); the
    same on every replica and, up to float32 rounding, what `tf.nn.moments`
    gives for the concatenation of the replicas' inputs.
  """
  with tf.name_scope('global_moments'):
    y = tf.cast(x, tf.float32) if x.dtype in _STATISTICS_DTYPES else x
    if mask is None:
      weights = tf.ones_like(y[..., :1])
    else:
      weights = tf.expand_dims(tf.cast(mask, y.dtype), axis=-1)
    count = tf.reduce_sum(tf.broadcast_to(weights, tf.shape(y)), reduction_axes, keepdims=True)
    total, count = replica_context.all_reduce(
      tf.distribute.ReduceOp.SUM,
      [tf.reduce_sum(y * weights, reduction_axes, keepdims=True), tf.stop_gradient(count)],
    )
    mean = tf.math.divide_no_nan(total, count)
    # As in tf.nn.moments the deviations are taken from a constant mean: the
    # variance's derivative with respect to the mean is zero, and the backward
    # pass needs no all-reduce for it.
    squared = tf.reduce_sum(
      weights * tf.math.squared_difference(y, tf.stop_gradient(mean)), reduction_axes, keepdims=True
    )
    variance = tf.math.divide_no_nan(
      replica_context.all_reduce(tf.distribute.ReduceOp.SUM, squared), count
    )
    if not keep_dims:
      mean = tf.squeeze(mean, reduction_axes)
      variance = tf.squeeze(variance, reduction_axes)
    return tf.cast(mean, x.dtype), tf.cast(variance, x.dtype)


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class BatchNormalization(tf_keras.layers.BatchNormalization):
  """tf_keras's BatchNormalization, with exact synchronized batch statistics.

  Inputs and outputs as tf_keras's layer ([batch, ..., channels] by default).
  With `synchronized=True` in training under a strategy of several replicas,
  the batch mean and variance are those of the global batch (`global_moments`);
  with one replica (one device, or no strategy) they are `tf.nn.moments`, as
  without `synchronized`, so a one-device run is the same either way.
  """

  def get_config(self):
    config = super().get_config()
    if self.synchronized:  # Only then: otherwise the config is tf_keras's.
      config['synchronized'] = True
    return config

  def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, mask=None):
    replica_context = tf.distribute.get_replica_context()
    if not self.synchronized or replica_context is None:
      return super()._calculate_mean_and_var(inputs, reduction_axes, keep_dims, mask=mask)
    if replica_context.num_replicas_in_sync == 1:
      return self._no_sync_calculate_mean_and_var(inputs, reduction_axes, keep_dims, mask=mask)
    return global_moments(inputs, reduction_axes, keep_dims, replica_context, mask=mask)

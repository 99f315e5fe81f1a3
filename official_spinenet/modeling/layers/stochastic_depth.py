"""Stochastic depth (Huang et al., 2016), as SpineNet uses it (Sec. 4.3).

In training, the residual branch of a block is dropped for whole examples with
probability `drop_rate` and the kept examples are scaled by 1/keep_prob, so that the
expected output equals the inference output, where the layer is the identity.
"""

from typing import Optional

import tensorflow as tf
import tf_keras


def get_stochastic_depth_rate(
  init_rate: Optional[float], block_number: int, num_blocks: int
) -> Optional[float]:
  """Linear schedule: block `block_number` (1-based) of `num_blocks` drops with
  `init_rate * block_number / num_blocks`, so the last block drops `init_rate`.

  Returns None when `init_rate` is None or 0 (no stochastic depth layer is built).
  """
  if not init_rate:
    return None
  if not 0.0 <= init_rate <= 1.0:
    raise ValueError(f'Stochastic depth rate {init_rate} is not in [0, 1].')
  if not 1 <= block_number <= num_blocks:
    raise ValueError(f'block_number {block_number} is not in [1, {num_blocks}].')
  return init_rate * float(block_number) / num_blocks


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class StochasticDepth(tf_keras.layers.Layer):
  """Drops the input per example in training; identity at inference.

  Input: the residual branch, [batch, ...]. Output: same shape.
  """

  def __init__(self, drop_rate: float, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'StochasticDepth drop_rate {drop_rate} must be in [0, 1).')
    self._drop_rate = drop_rate

  def call(self, inputs, training=None):
    if training is None:
      training = tf_keras.backend.learning_phase()
    if not training or not self._drop_rate:
      return inputs
    keep_prob = 1.0 - self._drop_rate
    batch_size = tf.shape(inputs)[0]
    mask_shape = tf.concat([[batch_size], tf.ones([tf.rank(inputs) - 1], tf.int32)], 0)
    # floor(keep + U[0, 1)) is 1 with probability keep_prob, else 0.
    mask = tf.floor(keep_prob + tf.random.uniform(mask_shape, dtype=inputs.dtype))
    return tf.math.divide(inputs, keep_prob) * mask

  def get_config(self):
    return {**super().get_config(), 'drop_rate': self._drop_rate}

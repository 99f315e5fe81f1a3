"""DropBlock (Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018, https://arxiv.org/abs/1810.12890).

Dropout drops single activations, which neighbouring activations of a conv feature
map largely restore. DropBlock drops contiguous block_size x block_size squares
instead (Algorithm 1 of the paper): block centres are sampled with rate

  gamma = drop_rate / block_size^2 * (H * W) / ((H - block_size + 1) * (W - block_size + 1))

(Eq. 1), only where the whole block fits inside the map, so that about `drop_rate` of
the activations are dropped; every centre is grown into its square, and the kept
activations are scaled by count(mask) / count_ones(mask), which keeps the mean of the
map. Each example and channel gets its own mask. In inference, and with drop_rate 0,
the layer is the identity. NAS-FPN trains its long schedules with it (NAS-FPN
Sec. 4.1 and 4.4, after the conv and BN of every merging cell); the SpineNet
paper's protocol A uses it in the backbone blocks.
"""

from typing import Union

import tensorflow as tf
import tf_keras


def _block_and_size(inputs: tf.Tensor, block_size: int):
  """(block, height, width): Python ints for static maps, else scalar tensors.

  A block larger than the map shrinks to the map's smaller side.
  """
  height, width = inputs.shape[1], inputs.shape[2]
  if height is not None and width is not None:
    return min(block_size, height, width), height, width
  shape = tf.shape(inputs)
  height, width = shape[1], shape[2]
  return tf.minimum(block_size, tf.minimum(height, width)), height, width


def _valid_centres(size: Union[int, tf.Tensor], block: Union[int, tf.Tensor]) -> tf.Tensor:
  """[size] bools: where a block centre keeps the whole block inside the map.

  The block of a centre i covers [i - block // 2, i + (block - 1) // 2] (the window
  of a stride-1 'SAME' max pool, for odd and even blocks alike).
  """
  positions = tf.range(size)
  return tf.logical_and(positions >= block // 2, positions < size - (block - 1) // 2)


def _grow_blocks(centres: tf.Tensor, block: Union[int, tf.Tensor]) -> tf.Tensor:
  """1 on every position within the block of a centre (a stride-1 'SAME' max pool)."""
  if isinstance(block, int):
    return tf.nn.max_pool2d(centres, ksize=block, strides=1, padding='SAME')
  # MaxPoolV2 takes the window size as a tensor (maps of dynamic size).
  return tf.raw_ops.MaxPoolV2(
    input=centres, ksize=tf.stack([1, block, block, 1]), strides=[1, 1, 1, 1], padding='SAME'
  )


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class DropBlock(tf_keras.layers.Layer):
  """Drops block_size x block_size squares of a feature map in training.

  Input [B, H, W, C] (channels last); output of the same shape. H and W may be
  dynamic.
  """

  def __init__(self, drop_rate: float = 0.1, block_size: int = 3, **kwargs):
    """Initializes the layer.

    Args:
      drop_rate: fraction of activations to drop, 1 - keep_prob of the paper;
        0 makes the layer the identity.
      block_size: side of the dropped squares (1 is dropout).
      **kwargs: passed to tf_keras.layers.Layer.
    """
    super().__init__(**kwargs)
    if not 0.0 <= drop_rate < 1.0:
      raise ValueError(f'DropBlock drop_rate {drop_rate} must be in [0, 1).')
    if int(block_size) != block_size or block_size < 1:
      raise ValueError(f'DropBlock block_size must be a positive integer, got {block_size}.')
    self._drop_rate = float(drop_rate)
    self._block_size = int(block_size)

  def call(self, inputs, training=None):
    if training is None:
      training = tf_keras.backend.learning_phase()
    if not training or not self._drop_rate:
      return inputs
    block, height, width = _block_and_size(inputs, self._block_size)
    to_float = lambda v: tf.cast(v, tf.float32)
    gamma = (
      self._drop_rate
      * to_float(height * width)
      / to_float(block * block)
      / to_float((height - block + 1) * (width - block + 1))
    )
    valid = tf.logical_and(
      _valid_centres(height, block)[:, None], _valid_centres(width, block)[None, :]
    )
    noise = tf.random.uniform(tf.shape(inputs), dtype=tf.float32)
    centres = tf.cast(tf.logical_and(noise < gamma, valid[None, :, :, None]), tf.float32)
    keep = 1.0 - _grow_blocks(centres, block)
    scale = to_float(tf.size(keep)) / tf.maximum(tf.reduce_sum(keep), 1.0)
    return inputs * tf.cast(tf.stop_gradient(keep * scale), inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'drop_rate': self._drop_rate, 'block_size': self._block_size}

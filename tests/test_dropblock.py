"""DropBlock: identity at inference, drop rate, block structure, expectation; in blocks."""

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling.layers import blocks
from official_spinenet.modeling.layers import dropblock


def _fully_dropped_windows(dropped: np.ndarray, block: int) -> np.ndarray:
  """[N, H, W, C] bools: positions covered by a block x block window dropped whole."""
  n, h, w, c = dropped.shape
  covered = np.zeros_like(dropped)
  for y in range(h - block + 1):
    for x in range(w - block + 1):
      whole = dropped[:, y : y + block, x : x + block, :].all(axis=(1, 2))  # [N, C]
      covered[:, y : y + block, x : x + block, :] |= whole[:, None, None, :]
  return covered


class DropBlockTest(tf.test.TestCase, parameterized.TestCase):
  def test_identity_at_inference_and_at_rate_zero(self):
    x = tf.random.normal([2, 16, 16, 4])
    self.assertAllEqual(dropblock.DropBlock(0.3, 3)(x, training=False), x)
    self.assertAllEqual(dropblock.DropBlock(0.3, 3)(x), x)  # Learning phase 0.
    self.assertAllEqual(dropblock.DropBlock(0.0, 3)(x, training=True), x)
    self.assertNotAllEqual(dropblock.DropBlock(0.3, 3)(x, training=True), x)

  @parameterized.parameters((0.1, 3), (0.2, 5), (0.3, 1))
  def test_drop_rate_close_to_requested(self, rate, block):
    tf.random.set_seed(3)
    y = dropblock.DropBlock(rate, block)(tf.ones([4, 128, 128, 8]), training=True).numpy()
    # Overlapping blocks drop a little less than the rate (exactly it for block 1).
    self.assertNear(float((y == 0).mean()), rate, 0.02 + rate * 0.05)

  @parameterized.parameters(3, 4, 7)
  def test_dropped_regions_are_whole_blocks(self, block):
    tf.random.set_seed(block)
    y = dropblock.DropBlock(0.15, block)(tf.ones([2, 40, 48, 3]), training=True).numpy()
    dropped = y == 0
    self.assertGreater(dropped.sum(), 0)
    # Every dropped position lies in a block x block square dropped whole, and the
    # square lies inside the map.
    self.assertAllEqual(_fully_dropped_windows(dropped, block), dropped)
    # Blocks are sampled per example and channel.
    self.assertNotAllEqual(dropped[..., 0], dropped[..., 1])

  def test_scaling_preserves_expectation(self):
    tf.random.set_seed(5)
    x = tf.random.uniform([8, 64, 64, 16], 0.5, 1.5)
    y = dropblock.DropBlock(0.25, 5)(x, training=True).numpy()
    kept = y != 0
    # Kept values are scaled by count(mask) / count_ones(mask).
    scale = kept.size / kept.sum()
    self.assertAllClose(y[kept], x.numpy()[kept] * scale, rtol=1e-5)
    self.assertNear(float(y.mean()), float(np.mean(x)), 0.02)

  def test_dynamic_size_and_block_larger_than_map(self):
    layer = dropblock.DropBlock(0.2, 5)
    fn = tf.function(
      lambda t: layer(t, training=True), input_signature=[tf.TensorSpec([None, None, None, 2])]
    )
    y = fn(tf.ones([2, 32, 32, 2])).numpy()
    self.assertAllEqual(_fully_dropped_windows(y == 0, 5), y == 0)
    # A 3 x 3 map with a 5 x 5 block: the block shrinks to the map.
    for out in (fn(tf.ones([64, 3, 3, 2])), layer(tf.ones([64, 3, 3, 2]), training=True)):
      out = out.numpy()
      self.assertTrue(np.isfinite(out).all())
      per_map = (out == 0).reshape(64, 9, 2)
      self.assertTrue(np.all(per_map.all(1) | ~per_map.any(1)))

  def test_config_and_bad_arguments(self):
    layer = dropblock.DropBlock(drop_rate=0.15, block_size=5, name='db')
    clone = dropblock.DropBlock.from_config(layer.get_config())
    self.assertEqual(clone.get_config(), layer.get_config())
    self.assertEqual(layer.get_config()['block_size'], 5)
    with self.assertRaisesRegex(ValueError, 'drop_rate'):
      dropblock.DropBlock(drop_rate=1.0)
    with self.assertRaisesRegex(ValueError, 'block_size'):
      dropblock.DropBlock(drop_rate=0.1, block_size=0)


class BlocksWithDropBlockTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(blocks.BottleneckBlock, blocks.ResidualBlock)
  def test_off_by_default_same_checkpoint_and_inference(self, block_cls):
    x = tf.random.normal([2, 16, 16, 32])
    plain = block_cls(filters=16, use_projection=True)
    plain(x)
    with_db = block_cls(filters=16, use_projection=True, dropblock_drop_rate=0.2, dropblock_size=3)
    with_db(x)
    self.assertIsNone(plain.get_config()['dropblock_drop_rate'])
    self.assertFalse(hasattr(plain, '_dropblock'))
    path = tf.train.Checkpoint(block=plain).write(os.path.join(self.get_temp_dir(), 'p'))
    other = tf.train.Checkpoint(block=with_db).write(os.path.join(self.get_temp_dir(), 'd'))
    self.assertEqual(
      dict(tf.train.list_variables(path)).keys(), dict(tf.train.list_variables(other)).keys()
    )
    tf.train.Checkpoint(block=with_db).read(path).assert_consumed()
    self.assertAllClose(with_db(x, training=False), plain(x, training=False))
    self.assertNotAllClose(with_db(x, training=True), plain(x, training=True))
    clone = block_cls.from_config(with_db.get_config())
    self.assertEqual(clone.get_config()['dropblock_drop_rate'], 0.2)
    self.assertEqual(clone.get_config()['dropblock_size'], 3)

  def test_block_group_passes_dropblock(self):
    inputs = tf_keras.Input([16, 16, 8])
    model = tf_keras.Model(
      inputs, blocks.block_group(inputs, 'residual', 8, 2, dropblock_drop_rate=0.1)
    )
    block_layers = [l for l in model.layers if isinstance(l, blocks.ResidualBlock)]
    self.assertLen(block_layers, 2)
    for layer in block_layers:
      self.assertEqual(layer.get_config()['dropblock_drop_rate'], 0.1)
    x = tf.random.normal([1, 16, 16, 8])
    self.assertAllEqual(model(x, training=False), model(x, training=False))


if __name__ == '__main__':
  tf.test.main()

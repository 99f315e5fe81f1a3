"""Keeps our functional graphs' layer numbering equal to the published checkpoints'.

A Keras functional model orders its layers by graph depth (distance to the outputs),
and an object-based checkpoint names each layer with weights by that order
(`layer_with_weights-N`). The published TF2 SpineNet checkpoints were written by a
graph in which nearest-neighbour upsampling is five ops deep and every block group
ends in an identity op. Where our graph is shallower we pad it with `Identity` layers
(free at run time), so that the same N names the same layer and those checkpoints
restore into our models without renaming. Tests pin this down layer by layer.
"""

import tensorflow as tf
import tf_keras

UPSAMPLING_DEPTH = 5
BLOCK_GROUP_END_DEPTH = 1


def pad_depth(x: tf.Tensor, depth: int) -> tf.Tensor:
  """Appends `depth` identity layers to a functional-graph tensor."""
  for _ in range(depth):
    x = tf_keras.layers.Identity()(x)
  return x

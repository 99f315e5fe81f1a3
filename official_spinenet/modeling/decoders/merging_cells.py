"""The binary operations of NAS-FPN's merging cells (NAS-FPN Sec. 3.1, Fig. 4).

Both take two feature maps already resampled to the cell's level and width:

  sum               a + b
  global_attention  the paper's "global pooling" op, after the Pyramid Attention
                    Network (Li et al., 2018) without its convs: the coarser input's
                    global max pool, through a sigmoid, gates the finer input, which
                    is added to the coarser one:
                    coarse + fine * sigmoid(max_{h,w} coarse).

`merge` applies them in a functional graph. To keep our layer numbering equal to
tf-models-official's NAS-FPN (so that its checkpoints restore without renaming, see
`modeling/layers/graph_layout.py`), the inputs are padded with identity layers to
the graph depth the reference gives them: its global attention is four ops deep on
the coarser input's gating path and two on the finer input's.
"""

from typing import Sequence

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.decoders import nasfpn_specs
from official_spinenet.modeling.layers import graph_layout

# Reference graph depths of global attention's inputs (reduce_max -> sigmoid ->
# multiply -> add for the coarser input, multiply -> add for the finer one).
ATTENTION_COARSE_DEPTH = 4
ATTENTION_FINE_DEPTH = 2


@tf_keras.utils.register_keras_serializable(package='official_spinenet')
class GlobalAttention(tf_keras.layers.Layer):
  """coarse + fine * sigmoid(global max pool of coarse).

  Input: [coarse, fine], both [B, H, W, C] (the same level and width). Output:
  [B, H, W, C].
  """

  def call(self, inputs):
    coarse, fine = inputs
    gate = tf.math.sigmoid(tf.math.reduce_max(coarse, axis=[1, 2], keepdims=True))
    return coarse + fine * gate

  def compute_output_shape(self, input_shape):
    return input_shape[0]


def merge(binary_op: str, nodes: Sequence[tf.Tensor], levels: Sequence[int]) -> tf.Tensor:
  """Combines a cell's two resampled inputs in a functional graph.

  Args:
    binary_op: 'sum' or 'global_attention'.
    nodes: the two inputs, [B, H, W, C] each, at the cell's level and width.
    levels: the levels the two inputs had before resampling; for global attention
      the input from the coarser (higher) level gates the other, the first on a tie.

  Returns:
    [B, H, W, C].
  """
  if binary_op == nasfpn_specs.SUM:
    return tf_keras.layers.Add()(list(nodes))
  if binary_op == nasfpn_specs.GLOBAL_ATTENTION:
    coarse, fine = nodes if levels[0] >= levels[1] else nodes[::-1]
    coarse = graph_layout.pad_depth(coarse, ATTENTION_COARSE_DEPTH - 1)
    fine = graph_layout.pad_depth(fine, ATTENTION_FINE_DEPTH - 1)
    return GlobalAttention()([coarse, fine])
  raise ValueError(
    f'Unknown binary_op {binary_op!r}; choose one of {list(nasfpn_specs.BINARY_OPS)}.'
  )

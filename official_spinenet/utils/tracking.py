"""Holding objects out of Keras' and tf.Module's attribute tracking."""

from typing import Any


class Untracked:
  """Holds `value` so that tf.Module / Keras do not track it.

  An attribute set to a tf.Module, a Keras model or a dict of them is tracked:
  it joins `variables`, checkpoints and SavedModels. Wrapping it here keeps it
  out of all three (e.g. a serving module that reads a model's variables but must
  not serialize the Keras model, or per-exit sub-models that share weights).
  """

  def __init__(self, value: Any):
    self.value = value

"""What every task (RetinaNet, Mask R-CNN, classification) gives the trainer.

The trainer (`official_spinenet.training.trainer`) owns the strategy, the step
loops, checkpoints and summaries; a task owns everything specific to one problem:
its model, its input pipelines, its losses and its evaluator. Tasks know nothing
of gin: `configurables.py` exposes their constructors to gin files.
"""

import abc
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import tensorflow as tf
import tf_keras


@dataclasses.dataclass
class InputConfig:
  """Where one split's data is and how it is batched and augmented.

  Attributes:
    file_pattern: TFRecord glob (comma-separated globs allowed).
    global_batch_size: batch over all replicas.
    aug_scale_min, aug_scale_max: random scale jitter (training only).
    aug_rand_hflip: random horizontal flips (training only).
    shuffle_buffer_size: examples in the shuffle buffer (training only).
    seed: optional shuffle seed (reproducible input order).
  """

  file_pattern: str = ''
  global_batch_size: int = 8
  aug_scale_min: float = 1.0
  aug_scale_max: float = 1.0
  aug_rand_hflip: bool = True
  shuffle_buffer_size: int = 1000
  seed: Optional[int] = None


class Evaluator(abc.ABC):
  """Accumulates per-batch model outputs on the host and computes metrics."""

  @abc.abstractmethod
  def update(self, outputs: Mapping[str, Any]) -> None:
    """Adds one batch of numpy outputs (from `Task.eval_outputs`, replicas concatenated)."""

  @abc.abstractmethod
  def result(self) -> Dict[str, float]:
    """Metrics over everything added since construction."""


class Task(abc.ABC):
  """One training problem."""

  #: Names of the scalar losses `build_losses` returns ('total_loss' first).
  loss_names: Sequence[str] = ('total_loss',)

  def __init__(self, train_data: InputConfig, eval_data: Optional[InputConfig]):
    self.train_data = train_data
    self.eval_data = eval_data

  def validate(self, mode: str) -> None:
    """Raises ValueError for a bad configuration, before any heavy work.

    Args:
      mode: 'train', 'eval', 'train_and_eval' or 'continuous_eval'; only the
        data the mode reads must exist.
    """
    del mode  # A task with nothing to check accepts every mode.

  @abc.abstractmethod
  def build_model(self) -> tf_keras.Model:
    """A new model with fresh weights (called inside the strategy scope)."""

  @abc.abstractmethod
  def build_inputs(
    self, is_training: bool, input_context: Optional[tf.distribute.InputContext] = None
  ) -> tf.data.Dataset:
    """(inputs, labels) batches of the per-replica batch size."""

  def train_outputs(self, model: tf_keras.Model, inputs: Any, labels: Any) -> Any:
    """The training-mode forward pass whose outputs `build_losses` takes.

    Most models see only the images; two-stage detectors also need the labels
    (ground truth boxes for RoI sampling), so the task makes the call.
    """
    del labels  # Single-stage models see only the images.
    return model(inputs, training=True)

  @abc.abstractmethod
  def build_losses(self, outputs: Any, labels: Any, model: tf_keras.Model) -> Dict[str, tf.Tensor]:
    """Losses of one replica's batch, keyed by `loss_names`.

    Under a strategy with N replicas the trainer *sums* gradients over replicas,
    so each replica's losses must add up to the loss of the global batch (e.g.
    divide by global normalisers, and weight decay by N).
    """

  @abc.abstractmethod
  def eval_outputs(self, model: tf_keras.Model, inputs: Any, labels: Any) -> Dict[str, tf.Tensor]:
    """Tensors of one replica's eval batch that the evaluator needs (batch-major)."""

  @abc.abstractmethod
  def build_evaluator(self) -> Evaluator:
    """A fresh evaluator for one pass over the eval data."""

  def checkpoint_items(self, model: tf_keras.Model) -> Dict[str, tf.Module]:
    """Named sub-modules an `--init_checkpoint` may restore ('backbone', ...)."""
    return {'model': model}

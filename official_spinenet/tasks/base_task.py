"""What every task (RetinaNet, Mask R-CNN, classification) gives the trainer.

The trainer (`official_spinenet.training.trainer`) owns the strategy, the step
loops, checkpoints and summaries; a task owns everything specific to one problem:
its model, its input pipelines, its losses and its evaluator. Tasks know nothing
of gin: `configurables.py` exposes their constructors to gin files.
"""

import abc
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras

from official_spinenet.data import record_check
from official_spinenet.data import retinanet_input


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
    skip_corrupt_records: drop records that cannot be read (truncated or corrupt
      shards, files that are not TFRecords: the rest of such a file) or decoded
      instead of stopping the run; each is logged with its file and counted
      (`data.record_check.skipped_records()`). Off by default: the first such record
      stops the run, and `record_check.data_error_message` names its file.
  """

  file_pattern: str = ''
  global_batch_size: int = 8
  aug_scale_min: float = 1.0
  aug_scale_max: float = 1.0
  aug_rand_hflip: bool = True
  shuffle_buffer_size: int = 1000
  seed: Optional[int] = None
  skip_corrupt_records: bool = False


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

  @property
  def _name(self) -> str:
    return type(self).__name__

  def validate(self, mode: str) -> None:
    """Raises ValueError for a bad configuration, before any heavy work.

    Args:
      mode: 'train', 'eval', 'train_and_eval' or 'continuous_eval'; only the
        data the mode reads must exist ('export' and other modes read none).
    """
    del mode  # A task with nothing to check accepts every mode.

  def kernel_regularizer(self) -> Optional[tf_keras.regularizers.Regularizer]:
    """L2 on kernels: l2_weight_decay / 2 * sum(w^2), as Model Garden (tf.nn.l2_loss)."""
    decay = getattr(self, 'l2_weight_decay', 0.0)
    return tf_keras.regularizers.l2(decay / 2.0) if decay else None

  @staticmethod
  def weight_decay_loss(model: tf_keras.Model) -> tf.Tensor:
    """This replica's share of the L2 loss: every replica holds the same weights, so
    the decay is divided by the replicas to count once in the trainer's sum."""
    if not model.losses:
      return tf.constant(0.0)
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.add_n([tf.cast(l, tf.float32) for l in model.losses]) / num_replicas

  def splits_read(self, mode: str) -> List[Tuple[str, InputConfig]]:
    """[(name, InputConfig)] of the splits `mode` reads; ValueError if one is missing."""
    splits = []
    if mode in ('train', 'train_and_eval'):
      splits.append(('train_data', self.train_data))
    if mode in ('eval', 'train_and_eval', 'continuous_eval'):
      if self.eval_data is None:
        raise ValueError(f'--mode={mode} needs {self._name}.eval_data.')
      splits.append(('eval_data', self.eval_data))
    return splits

  def split_input_args(
    self, is_training: bool, input_context: Optional[tf.distribute.InputContext]
  ) -> Dict[str, Any]:
    """The input-pipeline arguments every task takes from one split's InputConfig."""
    config = self.train_data if is_training else self.eval_data
    return dict(
      file_pattern=config.file_pattern,
      is_training=is_training,
      global_batch_size=config.global_batch_size,
      input_context=input_context,
      shuffle_buffer_size=config.shuffle_buffer_size,
      seed=config.seed,
      aug_rand_hflip=config.aug_rand_hflip,
      skip_corrupt_records=config.skip_corrupt_records,
    )

  def check_input_splits(self, mode: str) -> None:
    """ValueError naming the split whose files or batch size cannot work.

    Settings first (file pattern, batch size, empty files), then the files' first
    record headers (e.g. a PNG named .tfrecord): a bad setting is the likelier mistake.
    """
    splits = self.splits_read(mode)
    for name, config in splits:
      where = f'{self._name}.{name}'
      if not config.file_pattern:
        raise ValueError(
          f'{where}.file_pattern is empty; set it in the gin file or with --gin_param.'
        )
      files = retinanet_input.list_files(config.file_pattern)
      empty = [f for f in files if tf.io.gfile.stat(f).length == 0]
      if empty:
        raise ValueError(f'{where}: empty data file(s) {empty[:3]}.')
      if config.global_batch_size < 1:
        raise ValueError(f'{where}.global_batch_size must be >= 1, got {config.global_batch_size}.')
    for name, config in splits:
      self._check_first_records(name, config, retinanet_input.list_files(config.file_pattern))

  def _check_first_records(self, name: str, config: InputConfig, files: Sequence[str]) -> None:
    """Raises ValueError (or warns, when the split skips corrupt records) naming the files
    whose first record header is not TFRecord framing (e.g. a PNG named .tfrecord)."""
    problems = record_check.first_record_problems(files)
    if not problems:
      return
    text = '; '.join(str(p) for p in problems[:3]) + (' ...' if len(problems) > 3 else '')
    where = f'{self._name}.{name}.file_pattern'
    if config.skip_corrupt_records:
      logging.warning('%s: %s; they will be skipped (skip_corrupt_records).', where, text)
      return
    raise ValueError(f'{where}: {text}. {record_check.fix_hint(name.replace("_data", ""))}')

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

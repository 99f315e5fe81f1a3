"""The training and evaluation loops, under any tf.distribute strategy.

`run_experiment` is what `spinenet-train` calls: it builds the model and the
optimizer in the strategy's scope, resumes from the newest checkpoint in the
model dir (or initialises from `init_checkpoint`), runs `steps_per_loop` steps
per tf.function call, and writes checkpoints, TensorBoard summaries, a progress
line and COCO metrics (JSON) as it goes.

Gradients: each replica's losses are its share of the global-batch loss (see
`Task.build_losses`), so per-replica gradients are *summed*, then clipped by
global norm, then applied: N replicas compute exactly what one device computes
on the whole batch.
"""

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.data import record_check
from official_spinenet.evaluation import coco_evaluator
from official_spinenet.tasks import base_task
from official_spinenet.training import checkpoints
from official_spinenet.training import distribute
from official_spinenet.training import optimization
from official_spinenet.training import preemption
from official_spinenet.training import train_state
from official_spinenet.utils import files

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval')


@dataclasses.dataclass
class TrainerConfig:
  """Loop settings (steps are optimizer steps, i.e. global batches).

  Attributes:
    train_steps: total training steps.
    steps_per_loop: steps per host round trip (one tf.function call); also the
      interval of the progress line and train summaries.
    checkpoint_interval: steps between checkpoints (rounded up to whole loops).
    max_checkpoints: checkpoints kept in the model dir.
    eval_interval: steps between evaluations in train_and_eval (0: only at the end).
    eval_steps: eval batches per evaluation (None: the whole eval split).
    gradient_clip_norm: clip the summed gradients to this global norm (0: off).
    init_checkpoint: checkpoint to initialise from when the model dir has none.
    init_checkpoint_modules: which parts to take from init_checkpoint: 'backbone',
      'decoder', 'head', 'head_without_classifier', 'all'.
    continuous_eval_timeout: seconds continuous_eval waits for a new checkpoint.
    loss_growth_warning: warn (log and final summary) when a step's loss reaches
      this multiple of the smallest step loss so far (0: off).
    max_loss_growth: stop with FloatingPointError, without saving, when it
      reaches this multiple: a run whose finite loss grew a million-fold has
      diverged (0: off).
  """

  train_steps: int = 1000
  steps_per_loop: int = 100
  checkpoint_interval: int = 1000
  max_checkpoints: int = 5
  eval_interval: int = 0
  eval_steps: Optional[int] = None
  gradient_clip_norm: float = 0.0
  init_checkpoint: str = ''
  init_checkpoint_modules: Sequence[str] = ('backbone',)
  continuous_eval_timeout: int = 3600
  loss_growth_warning: float = 100.0
  max_loss_growth: float = 1e6

  def __post_init__(self):
    """Settings that cannot work fail when gin builds the config, naming the binding."""
    at_least = dict(train_steps=1, steps_per_loop=1, checkpoint_interval=1, max_checkpoints=1)
    at_least.update(eval_interval=0, continuous_eval_timeout=0)
    for name, low in at_least.items():
      if getattr(self, name) < low:
        raise ValueError(f'TrainerConfig.{name} must be >= {low}, got {getattr(self, name)}.')
    if self.eval_steps is not None and self.eval_steps < 1:
      raise ValueError(f'TrainerConfig.eval_steps must be >= 1 or None, got {self.eval_steps}.')
    for name in ('gradient_clip_norm', 'loss_growth_warning', 'max_loss_growth'):
      value = getattr(self, name)
      if not value >= 0 or math.isinf(value):
        raise ValueError(f'TrainerConfig.{name} must be a finite number >= 0, got {value}.')


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


def _to_numpy(strategy: tf.distribute.Strategy, value) -> np.ndarray:
  """Concatenates per-replica batch-major tensors on the host."""
  parts = [np.asarray(v) for v in strategy.experimental_local_results(value)]
  parts = [p for p in parts if p.ndim == 0 or p.shape[0]]
  if not parts:
    return np.asarray(strategy.experimental_local_results(value)[0])
  return np.concatenate(parts, axis=0) if parts[0].ndim else parts[0]


def _sum_over_replicas(tensors):
  """Sums a list of tensors over replicas with one all-reduce of their concatenation.

  One collective per step instead of one per variable: fewer launches, and no
  dependence on the order in which each worker issues them (collectives are
  matched by the order of creation across workers).
  """
  context = tf.distribute.get_replica_context()
  if context.num_replicas_in_sync == 1:
    return tensors
  tensors = [tf.convert_to_tensor(t) for t in tensors]
  # One dtype for the concatenation: float64 if any tensor is (the gradients of
  # float64 layers beside the float32 stop vote); each comes back in its own.
  dtype = tf.float64 if any(t.dtype == tf.float64 for t in tensors) else tf.float32
  flat = tf.concat([tf.cast(tf.reshape(t, [-1]), dtype) for t in tensors], axis=0)
  flat = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
  sizes = [t.shape.num_elements() for t in tensors]
  parts = zip(tf.split(flat, sizes), tensors)
  return [tf.cast(tf.reshape(part, t.shape), t.dtype) for part, t in parts]


def _inputs_finite(inputs) -> tf.Tensor:
  """True if every float tensor of a batch's inputs is finite (images, not labels)."""
  checks = [
    tf.reduce_all(tf.math.is_finite(t))
    for t in tf.nest.flatten(inputs)
    if isinstance(t, tf.Tensor) and t.dtype.is_floating
  ]
  return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _data_error(error: tf.errors.DataLossError, file_pattern: str, split: str) -> Exception:
  """A DataLossError as a ValueError naming the corrupt shard(s) (data.record_check)."""
  message = record_check.data_error_message(error, [file_pattern], split=split)
  return ValueError(message) if message else error


class Trainer:
  """Owns the model, optimizer, checkpoints and loops of one task."""

  def __init__(
    self,
    task: base_task.Task,
    strategy: tf.distribute.Strategy,
    model_dir: str,
    config: TrainerConfig,
    learning_rate: Callable[..., Any],
    optimizer: Callable[..., tf_keras.optimizers.Optimizer] = (optimization.build_sgd_optimizer),
    mixed_precision: str = 'float32',
  ):
    """Builds the model and optimizer in the strategy's scope.

    Args:
      task: the task.
      strategy: where to run.
      model_dir: checkpoints, summaries, metrics and the operative config.
      config: loop settings.
      learning_rate: builder called as learning_rate(global_batch_size=,
        total_steps=) -> float or schedule.
      optimizer: builder called as optimizer(learning_rate, mixed_precision=).
      mixed_precision: 'float32', 'float16' or 'bfloat16' (the global policy
        must already be set, see distribute.set_precision).
    """
    self.task = task
    self.strategy = strategy
    self.model_dir = model_dir
    self.config = config
    self.chief = distribute.is_chief(strategy)
    self._mixed_precision = mixed_precision
    replicas = strategy.num_replicas_in_sync
    for name, data in (('train_data', task.train_data), ('eval_data', task.eval_data)):
      if data is not None and data.global_batch_size % replicas:
        raise ValueError(
          f'{name}.global_batch_size={data.global_batch_size} is not divisible by the '
          f'{replicas} replicas of the strategy; pick a multiple of {replicas}.'
        )
    # Before the model: a schedule that cannot work (warm-up longer than training) fails cheaply.
    self.learning_rate = build_learning_rate(learning_rate, task, config)
    with strategy.scope():
      self.model = task.build_model()
      self.optimizer = optimizer(self.learning_rate, mixed_precision=mixed_precision)
      self.optimizer.build(self.model.trainable_variables)
      items = task.checkpoint_items(self.model)
      self.checkpoint = tf.train.Checkpoint(optimizer=self.optimizer, **items)
    self._items = items
    self.manager = tf.train.CheckpointManager(
      self.checkpoint,
      checkpoints.worker_checkpoint_dir(model_dir, self.chief, distribute.worker_id(strategy)),
      max_to_keep=config.max_checkpoints,
      step_counter=self.optimizer.iterations,
      checkpoint_interval=config.checkpoint_interval,
    )
    self._train_loop_fn = None
    self._eval_step_fn = None
    self._writers = {}
    self._stop = preemption.StopRequest()
    self._multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    self._check_weights = train_state.weight_check_fn(
      train_state.floating_variables(self.model, self.optimizer),
      train_state.floating_variables(self.model),
    )
    self._largest_weight = math.inf  # at the last check: restore or the previous loop
    self.loss_watch = train_state.LossWatch(config.loss_growth_warning, config.max_loss_growth)

  @property
  def global_step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  @property
  def warnings(self) -> List[str]:
    """What went wrong without stopping the run (e.g. a loss that grew 1000-fold)."""
    return list(self.loss_watch.warnings)

  def _writer(self, name: str):
    if name not in self._writers:
      self._writers[name] = (
        tf.summary.create_file_writer(os.path.join(self.model_dir, name))
        if self.chief
        else tf.summary.create_noop_writer()
      )
    return self._writers[name]

  # ---- checkpoints ----------------------------------------------------------

  def restore(self) -> str:
    """Resumes from the model dir's newest good checkpoint, else applies init_checkpoint.

    The newest checkpoint is good by construction (`train` never saves
    non-finite weights); one that is not (written before that check) is skipped
    for the one before it, with a warning. The gin file's optimizer settings
    and learning rate apply from the restored step on.

    Returns:
      What was restored: a checkpoint path, 'init:<path>' or '' (fresh start).
    """
    if self.chief:
      train_state.remove_orphaned_temp_files(self.model_dir)
    state = tf.train.get_checkpoint_state(self.model_dir)
    if state and state.model_checkpoint_path:
      paths = list(state.all_model_checkpoint_paths)
      if state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
      for path in reversed(paths):
        if not tf.io.gfile.exists(path + '.index'):
          continue
        self._read_training_checkpoint(path)
        finite, self._largest_weight = (float(v) for v in self._check_weights())
        if finite:
          self._apply_gin_optimizer_settings(path)
          logging.info('Resumed from %s at step %d.', path, self.global_step)
          return path
        logging.warning('%s holds NaN or Inf weights: trying the checkpoint before it.', path)
      raise FloatingPointError(
        f'No checkpoint in {self.model_dir!r} has finite weights ({paths}); start a new '
        '--model_dir (lower the learning rate).'
      )
    if self.config.init_checkpoint:
      checkpoints.restore_modules(
        self.config.init_checkpoint, self._items, self.config.init_checkpoint_modules
      )
      return f'init:{self.config.init_checkpoint}'
    return ''

  def _state_checkpoint(self) -> tf.train.Checkpoint:
    """The training checkpoint without the optimizer's learning rate (gin's applies).

    With loss scaling (float16) the optimizer's structure is nested: the whole
    checkpoint is read and the learning rate assigned afterwards.
    """
    if hasattr(self.optimizer, 'inner_optimizer'):
      return self.checkpoint
    state = tf.__internal__.tracking.AutoTrackable()
    state._iterations = self.optimizer._iterations  # pylint: disable=protected-access
    state._variables = self.optimizer._variables  # pylint: disable=protected-access
    return tf.train.Checkpoint(optimizer=state, **self._items)

  def _read_training_checkpoint(self, path: str) -> None:
    try:
      status = self._state_checkpoint().read(path)
      status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
      saved = train_state.read_settings(self.model_dir) or {}
      current = train_state.optimizer_settings(self.optimizer, self.learning_rate)
      changes = train_state.settings_differences(saved, current) if saved else []
      first_line = str(e).strip().splitlines()[0][:300]
      raise ValueError(
        f'Cannot resume from {path}: it does not fit the model and optimizer the gin '
        f'configuration builds ({first_line}). '
        + (f'Changed since it was written: {"; ".join(changes)}. ' if changes else '')
        + 'Resume with the settings it was trained with, or train in a new --model_dir '
        "(TrainerConfig.init_checkpoint with init_checkpoint_modules=['all'] takes its weights)."
      ) from e

  def _apply_gin_optimizer_settings(self, path: str) -> None:
    """Makes the gin learning rate win over the checkpoint's, and says what changed."""
    current = train_state.optimizer_settings(self.optimizer, self.learning_rate)
    saved = train_state.read_settings(self.model_dir)
    changes = train_state.settings_differences(saved, current) if saved else []
    if not isinstance(self.learning_rate, tf_keras.optimizers.schedules.LearningRateSchedule):
      inner = getattr(self.optimizer, 'inner_optimizer', self.optimizer)
      restored = train_state.checkpoint_learning_rate(path)
      inner.learning_rate = float(self.learning_rate)
      # The checkpoint holds it in float32: equal within float32 rounding is unchanged.
      if restored is not None and not math.isclose(
        restored, float(self.learning_rate), rel_tol=1e-6
      ):
        change = f'learning rate {restored:.6g} -> {float(self.learning_rate):.6g}'
        if not any(c.startswith('learning_rate.') for c in changes):
          changes.append(change)
    if changes:
      logging.warning(
        'Resuming %s with changed optimizer settings; the gin values apply: %s.',
        path,
        '; '.join(changes),
      )

  def _save(self, step: int, check_interval: bool) -> Optional[str]:
    """CheckpointManager.save, with a write failure (e.g. a full disk) named."""
    previous = self.manager.latest_checkpoint
    try:
      path = self.manager.save(checkpoint_number=step, check_interval=check_interval)
    except (tf.errors.OpError, OSError) as e:
      if self.chief:
        train_state.remove_orphaned_temp_files(self.model_dir)
      message = getattr(e, 'message', None) or str(e)
      raise OSError(
        f'Could not write the checkpoint of step {step} to {self.manager.directory!r}: '
        f'{message}. '
        + (f'The previous checkpoint {previous} is intact; ' if previous else '')
        + 'free space (or fix the folder) and run again to resume.'
      ) from e
    if path and self.chief:
      files.write_json_atomically(
        train_state.optimizer_settings(self.optimizer, self.learning_rate),
        os.path.join(self.model_dir, train_state.SETTINGS_FILE),
      )
    return path

  # ---- training -------------------------------------------------------------

  def _replica_step(self, inputs, labels, stop_requested):
    model, optimizer = self.model, self.optimizer
    finite_inputs = _inputs_finite(inputs)
    with tf.GradientTape() as tape:
      outputs = self.task.train_outputs(model, inputs, labels)
      losses = self.task.build_losses(outputs, labels, model)
      loss = losses['total_loss']
      if self._mixed_precision == 'float16':
        loss = optimizer.get_scaled_loss(loss)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    if self._mixed_precision == 'float16':
      grads = optimizer.get_unscaled_gradients(grads)
    # The stop vote rides on the gradients' all-reduce: every worker learns in the
    # same step whether any of them received SIGTERM, and they stop together.
    *grads, stop_votes = _sum_over_replicas(grads + [tf.cast(stop_requested, tf.float32)])
    if self.config.gradient_clip_norm > 0:
      # The norm over gradients of any dtypes (float64 layers beside float32 ones).
      norm = tf.linalg.global_norm([tf.cast(g, tf.float32) for g in grads])
      grads, _ = tf.clip_by_global_norm(grads, self.config.gradient_clip_norm, use_norm=norm)
    optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
    values = [tf.cast(losses[name], tf.float32) for name in self.task.loss_names]
    return tf.stack(values + [1.0 - tf.cast(finite_inputs, tf.float32), stop_votes])

  def build_train_loop(self) -> Callable[[Any, tf.Tensor], Dict[str, tf.Tensor]]:
    """The compiled loop `train` runs: loop(iterator, num_steps) -> mean losses.

    It stops early, after the step in flight, when SIGTERM arrives (on any
    worker). Besides the mean losses it returns '_steps' (steps run),
    '_bad_inputs' (replica-steps whose input images held NaN / Inf), '_lowest' /
    '_last' (the smallest and the last step's total loss) and '_stopped' (the
    loop ended on a stop request). Public for benchmarks, which time it without
    checkpoints and summaries.
    """
    strategy, names, stop = self.strategy, self.task.loss_names, self._stop.variable
    # One process can read its own flag before each step. Workers may only act
    # on what the step's all-reduce told all of them: a worker that stopped on
    # its own flag would leave the others waiting in the next collective.
    local_stop = not self._multi_worker

    # No autograph: the loop is an explicit tf.while_loop, and converting every
    # layer call of the model costs seconds per trace for nothing.
    @tf.function(autograph=False)
    def train_loop(iterator, num_steps):
      def keep_going(steps, stopping, totals, lowest, last):
        del totals, lowest, last  # unused
        return tf.logical_and(steps < num_steps, tf.logical_not(stopping))

      def step(steps, stopping, totals, lowest, last):
        del stopping, last  # replaced
        inputs, labels = next(iterator)
        values = strategy.run(self._replica_step, args=(inputs, labels, stop.read_value()))
        values = strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)
        stopping = values[-1] > 0
        if local_stop:
          stopping = tf.logical_or(stopping, stop.read_value())
        return steps + 1, stopping, totals + values, tf.minimum(lowest, values[0]), values[0]

      # One vector of sums: a plain tensor is the loop variable carried best.
      start = (
        tf.constant(0),
        stop.read_value() if local_stop else tf.constant(False),
        tf.zeros([len(names) + 2]),
        tf.constant(math.inf),
        tf.constant(math.nan),
      )
      steps, stopping, totals, lowest, last = tf.while_loop(keep_going, step, start)
      means = totals / tf.cast(tf.maximum(steps, 1), tf.float32)
      result = {name: means[i] for i, name in enumerate(names)}
      result.update(_steps=steps, _bad_inputs=totals[-2], _lowest=lowest, _last=last)
      result.update(_stopped=stopping)
      return result

    return train_loop

  def _run_train_loop(self, num_steps: int) -> Dict[str, float]:
    if self._train_loop_fn is None:
      self._train_loop_fn = self.build_train_loop()
      dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: self.task.build_inputs(True, ctx)
      )
      self._train_iterator = iter(dataset)
    try:
      outputs = self._train_loop_fn(self._train_iterator, tf.constant(num_steps, tf.int32))
    except tf.errors.DataLossError as e:
      raise _data_error(e, self.task.train_data.file_pattern, 'train') from e
    return {k: float(v) for k, v in outputs.items()}

  def _check_loop(self, outputs: Dict[str, float]) -> Dict[str, float]:
    """Raises if the loop's inputs, losses or weights went bad; returns the mean losses.

    Nothing is saved after a raise: the newest checkpoint stays the last good one.
    """
    step = self.global_step
    if outputs['_bad_inputs'] > 0:
      raise ValueError(
        f'The training input images hold NaN or Inf values (in the steps up to step '
        f'{step}; train_data.file_pattern={self.task.train_data.file_pattern!r}): the '
        'records or the input pipeline produce non-finite pixels.'
      )
    losses = {k: v for k, v in outputs.items() if not k.startswith('_')}
    if not math.isfinite(losses['total_loss']):
      raise FloatingPointError(
        f'The training loss became {losses["total_loss"]} by step {step}; lower the '
        'learning rate, lengthen the warm-up or set gradient_clip_norm. '
        f'{self._last_good()}'
      )
    finite, largest = (float(v) for v in self._check_weights())
    growth = largest / self._largest_weight if self._largest_weight > 0 else 0.0
    if not finite or growth > train_state.MAX_WEIGHT_GROWTH:
      what = (
        'became NaN or Inf' if not finite else f'grew {growth:.1e}-fold (largest {largest:.3g})'
      )
      raise FloatingPointError(
        f'The weights {what} by step {step} although the loss was finite; lower the '
        f'learning rate, lengthen the warm-up or set gradient_clip_norm. {self._last_good()}'
      )
    self._largest_weight = largest
    self.loss_watch.update(step, outputs['_lowest'], outputs['_last'])
    return losses

  def _last_good(self) -> str:
    latest = self.manager.latest_checkpoint
    if not latest:
      return 'Nothing was saved.'
    return (
      f'Not saved: the newest checkpoint, {latest}, is the last good one and a resume starts there.'
    )

  def _log_progress(self, losses, num_steps, elapsed, start_step, start_time) -> None:
    config, step = self.config, self.global_step
    learning_rate = float(optimization.current_learning_rate(self.optimizer))
    steps_per_sec = num_steps / max(elapsed, 1e-9)
    batch = self.task.train_data.global_batch_size
    eta = (config.train_steps - step) * (time.time() - start_time) / max(step - start_step, 1)
    logging.info(
      'step %d/%d | loss %.4f | lr %.5f | %.2f steps/s | %.1f examples/s | ETA %s',
      step,
      config.train_steps,
      losses['total_loss'],
      learning_rate,
      steps_per_sec,
      steps_per_sec * batch,
      _format_duration(eta),
    )
    with self._writer('train').as_default(step=step):
      for name, value in losses.items():
        tf.summary.scalar(name, value)
      tf.summary.scalar('learning_rate', learning_rate)
      tf.summary.scalar('steps_per_second', steps_per_sec)
      tf.summary.scalar('examples_per_second', steps_per_sec * batch)

  def _preempted(self) -> None:
    """Saves at the current step (unless already saved there) and raises PreemptedError."""
    step = self.global_step
    latest = self.manager.latest_checkpoint
    if not (latest and latest.endswith(f'-{step}')):
      latest = self._save(step, check_interval=False)
    self._writer('train').flush()
    raise preemption.PreemptedError(step, latest)

  def train(self, until_step: Optional[int] = None) -> Dict[str, float]:
    """Trains up to until_step (default: train_steps) and saves a final checkpoint.

    Every loop's losses, inputs and resulting weights are checked before
    anything is saved. On SIGTERM it saves after the step in flight and raises
    preemption.PreemptedError.

    Args:
      until_step: stop at this global step.

    Returns:
      The mean losses of the last loop.

    Raises:
      FloatingPointError: a non-finite loss or weight, or a diverged loss.
      ValueError: non-finite input images, or a corrupt TFRecord (named).
      OSError: a checkpoint could not be written (the previous one is intact).
      preemption.PreemptedError: SIGTERM; a checkpoint was saved.
    """
    config = self.config
    until_step = min(until_step or config.train_steps, config.train_steps)
    start_step, start_time = self.global_step, time.time()
    losses = {}
    if math.isinf(self._largest_weight):  # fresh or init_checkpoint weights
      self._largest_weight = float(self._check_weights()[1])
    with self._stop.watch():
      while self.global_step < until_step:
        if self._stop.requested and not self._multi_worker:
          self._preempted()
        num_steps = min(config.steps_per_loop, until_step - self.global_step)
        loop_start = time.time()
        outputs = self._run_train_loop(num_steps)
        if outputs['_steps'] == 0:
          continue  # stopped before the first step
        losses = self._check_loop(outputs)
        elapsed = time.time() - loop_start
        self._log_progress(losses, int(outputs['_steps']), elapsed, start_step, start_time)
        if outputs['_stopped'] or (self._stop.requested and not self._multi_worker):
          self._preempted()
        # Every checkpoint_interval steps, and always at the end of the call.
        step = self.global_step
        self._save(step, check_interval=step < until_step)
    self._writer('train').flush()
    return losses

  # ---- evaluation -----------------------------------------------------------

  def evaluate(self, num_steps: Optional[int] = None) -> Dict[str, float]:
    """Runs the model over the eval split and returns the evaluator's metrics.

    The metrics go to TensorBoard ('eval') and, on the chief, to
    model_dir/metrics.json (the latest) and model_dir/eval/metrics-<step>.json.
    """
    if self.task.eval_data is None:
      raise ValueError('The task has no eval_data.')
    if self._eval_step_fn is None:
      self._eval_step_fn = tf.function(
        lambda inputs, labels: self.strategy.run(
          self.task.eval_outputs, args=(self.model, inputs, labels)
        ),
        reduce_retracing=True,
      )
    dataset = self.strategy.distribute_datasets_from_function(
      lambda ctx: self.task.build_inputs(False, ctx)
    )
    evaluator = self.task.build_evaluator()
    num_steps = num_steps if num_steps is not None else self.config.eval_steps
    start = time.time()
    try:
      for i, (inputs, labels) in enumerate(dataset):
        if num_steps is not None and i >= num_steps:
          break
        outputs = self._eval_step_fn(inputs, labels)
        evaluator.update({k: _to_numpy(self.strategy, v) for k, v in outputs.items()})
    except tf.errors.DataLossError as e:
      raise _data_error(e, self.task.eval_data.file_pattern, 'eval') from e
    metrics = {k: float(v) for k, v in evaluator.result().items()}
    step = self.global_step
    logging.info(
      'eval at step %d (%.1f s): %s',
      step,
      time.time() - start,
      ', '.join(f'{k} {v:.4f}' for k, v in metrics.items() if '/' not in k),
    )
    with self._writer('eval').as_default(step=step):
      for name, value in metrics.items():
        tf.summary.scalar(name, value)
    self._writer('eval').flush()
    if self.chief:
      record = dict(sorted({'step': step, **metrics}.items()))
      for path in (
        os.path.join(self.model_dir, 'eval', f'metrics-{step}.json'),
        os.path.join(self.model_dir, 'metrics.json'),
      ):
        files.write_json_atomically(record, path, indent=2)
    return metrics

  def continuous_evaluate(self) -> Dict[str, float]:
    """Evaluates each new checkpoint of the model dir until the last training step."""
    metrics = {}
    for path in tf.train.checkpoints_iterator(
      self.model_dir, timeout=self.config.continuous_eval_timeout
    ):
      self.checkpoint.read(path).expect_partial()
      metrics = self.evaluate()
      if self.global_step >= self.config.train_steps:
        break
    return metrics


def build_learning_rate(
  learning_rate: Callable[..., Any], task: base_task.Task, config: TrainerConfig
) -> Any:
  """learning_rate(global_batch_size=, total_steps=), its errors naming the gin settings."""
  try:
    return learning_rate(
      global_batch_size=task.train_data.global_batch_size, total_steps=config.train_steps
    )
  except ValueError as e:
    raise ValueError(f'Bad learning-rate configuration: {e}') from e


def check_before_training(
  task: base_task.Task,
  mode: str,
  model_dir: str,
  config: TrainerConfig,
  learning_rate: Callable[..., Any],
) -> None:
  """Cheap checks of what would otherwise fail after the model is built or has trained.

  Raises:
    ValueError: a learning-rate schedule that cannot work, an unwritable model
      dir, an init_checkpoint without the modules asked for, or an eval
      annotation file that does not describe the eval records (or is not JSON).
  """
  build_learning_rate(learning_rate, task, config)
  checkpoints.check_model_dir(model_dir)
  resuming = tf.io.gfile.isdir(model_dir) and tf.train.latest_checkpoint(model_dir)
  if config.init_checkpoint and mode != 'continuous_eval' and not resuming:
    checkpoints.check_init_checkpoint(config.init_checkpoint, config.init_checkpoint_modules)
  # Detection tasks evaluate against a COCO JSON; other tasks have none.
  annotation_file = getattr(task, 'annotation_file', None)
  if annotation_file and mode != 'train' and task.eval_data is not None:
    coco_evaluator.check_annotations_match_records(annotation_file, task.eval_data.file_pattern)


def run_experiment(
  task: base_task.Task,
  mode: str,
  model_dir: str,
  strategy: tf.distribute.Strategy,
  config: TrainerConfig,
  learning_rate: Callable[..., Any],
  optimizer: Callable[..., tf_keras.optimizers.Optimizer] = (optimization.build_sgd_optimizer),
  mixed_precision: str = 'float32',
  operative_config: Optional[Callable[[], str]] = None,
) -> Dict[str, float]:
  """Train, evaluate, or both, as `spinenet-train --mode` asks.

  Args:
    task, strategy, config, learning_rate, optimizer, mixed_precision: see Trainer.
    mode: one of MODES.
    model_dir: output directory (created).
    operative_config: returns the text written to model_dir/operative_config.gin
      once the model is built (gin's operative configuration, from the binary).

  Returns:
    The last evaluation's metrics (train_and_eval, eval, continuous_eval), or
    the last training loop's losses (train).
  """
  if mode not in MODES:
    raise ValueError(f'Unknown --mode {mode!r}; choose one of {MODES}.')
  if mode != 'train' and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    raise ValueError(
      f'--mode={mode} is not supported with multi_worker_mirrored: run the '
      'workers with --mode=train and a separate --mode=continuous_eval job.'
    )
  task.validate(mode)
  check_before_training(task, mode, model_dir, config, learning_rate)
  trainer = Trainer(task, strategy, model_dir, config, learning_rate, optimizer, mixed_precision)
  if operative_config is not None and trainer.chief:
    files.atomic_write(os.path.join(model_dir, 'operative_config.gin'), operative_config())
  if mode == 'continuous_eval':
    return trainer.continuous_evaluate()
  restored = trainer.restore()
  if mode == 'eval':
    if not restored:
      raise ValueError(f'--mode=eval: no checkpoint in {model_dir!r} and no init_checkpoint.')
    return trainer.evaluate()
  if mode == 'train':
    try:
      losses = trainer.train()
    finally:  # also on preemption: the scratch copy is never resumed from
      if not trainer.chief and tf.io.gfile.exists(trainer.manager.directory):
        tf.io.gfile.rmtree(trainer.manager.directory)
    _log_warnings(trainer)
    return losses
  every = config.eval_interval
  metrics = {}
  while trainer.global_step < config.train_steps:
    target = (trainer.global_step // every + 1) * every if every else config.train_steps
    trainer.train(until_step=target)
    metrics = trainer.evaluate()
  metrics = metrics or trainer.evaluate()
  _log_warnings(trainer)
  return metrics


def _log_warnings(trainer: Trainer) -> None:
  """The run's final summary of what went wrong without stopping it."""
  if trainer.warnings:
    logging.warning(
      'Training reached step %d with %d warning(s): %s.',
      trainer.global_step,
      len(trainer.warnings),
      '; '.join(trainer.warnings),
    )

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
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.tasks import base_task
from official_spinenet.training import checkpoints
from official_spinenet.training import distribute
from official_spinenet.training import optimization
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
  flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
  flat = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
  sizes = [t.shape.num_elements() for t in tensors]
  return [tf.reshape(part, t.shape) for part, t in zip(tf.split(flat, sizes), tensors)]


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
    with strategy.scope():
      self.model = task.build_model()
      self.learning_rate = learning_rate(
        global_batch_size=task.train_data.global_batch_size, total_steps=config.train_steps
      )
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

  @property
  def global_step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def _writer(self, name: str):
    if name not in self._writers:
      self._writers[name] = (
        tf.summary.create_file_writer(os.path.join(self.model_dir, name))
        if self.chief
        else tf.summary.create_noop_writer()
      )
    return self._writers[name]

  def restore(self) -> str:
    """Resumes from the model dir's newest checkpoint, else applies init_checkpoint.

    Returns:
      What was restored: a checkpoint path, 'init:<path>' or '' (fresh start).
    """
    latest = tf.train.latest_checkpoint(self.model_dir)
    if latest:
      self.checkpoint.read(latest).assert_existing_objects_matched()
      logging.info('Resumed from %s at step %d.', latest, self.global_step)
      return latest
    if self.config.init_checkpoint:
      checkpoints.restore_modules(
        self.config.init_checkpoint, self._items, self.config.init_checkpoint_modules
      )
      return f'init:{self.config.init_checkpoint}'
    return ''

  # ---- training -------------------------------------------------------------

  def _replica_step(self, inputs, labels):
    model, optimizer = self.model, self.optimizer
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
    grads = _sum_over_replicas(grads)
    if self.config.gradient_clip_norm > 0:
      grads, _ = tf.clip_by_global_norm(grads, self.config.gradient_clip_norm)
    optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
    return tf.stack([tf.cast(losses[name], tf.float32) for name in self.task.loss_names])

  def build_train_loop(self) -> Callable[[Any, tf.Tensor], Dict[str, tf.Tensor]]:
    """The compiled loop `train` runs: loop(iterator, num_steps) -> mean losses.

    Public for benchmarks, which time it without checkpoints and summaries.
    """
    strategy, names = self.strategy, self.task.loss_names

    @tf.function
    def train_loop(iterator, num_steps):
      # One vector of loss sums: a plain tensor is the loop variable autograph
      # carries best through tf.range.
      totals = tf.zeros([len(names)])
      for _ in tf.range(num_steps):
        inputs, labels = next(iterator)
        losses = strategy.run(self._replica_step, args=(inputs, labels))
        totals += strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
      means = totals / tf.cast(num_steps, tf.float32)
      return {name: means[i] for i, name in enumerate(names)}

    return train_loop

  def train(self, until_step: Optional[int] = None) -> Dict[str, float]:
    """Trains up to until_step (default: train_steps) and saves a final checkpoint.

    Args:
      until_step: stop at this global step.

    Returns:
      The mean losses of the last loop.
    """
    config = self.config
    until_step = min(until_step or config.train_steps, config.train_steps)
    if self._train_loop_fn is None:
      self._train_loop_fn = self.build_train_loop()
      dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: self.task.build_inputs(True, ctx)
      )
      self._train_iterator = iter(dataset)
    batch = self.task.train_data.global_batch_size
    start_step, start_time = self.global_step, time.time()
    losses = {}
    while self.global_step < until_step:
      step = self.global_step
      num_steps = min(config.steps_per_loop, until_step - step)
      loop_start = time.time()
      losses = self._train_loop_fn(self._train_iterator, tf.constant(num_steps, tf.int32))
      losses = {k: float(v) for k, v in losses.items()}
      elapsed = time.time() - loop_start
      step = self.global_step
      if not math.isfinite(losses['total_loss']):
        raise FloatingPointError(
          f'The training loss became {losses["total_loss"]} by step {step}; lower the '
          'learning rate, lengthen the warm-up or set gradient_clip_norm.'
        )
      learning_rate = float(optimization.current_learning_rate(self.optimizer))
      steps_per_sec = num_steps / elapsed
      done = step - start_step
      eta = (config.train_steps - step) * (time.time() - start_time) / max(done, 1)
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
      # Every checkpoint_interval steps, and always at the end of the call.
      self.manager.save(checkpoint_number=step, check_interval=step < until_step)
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
    for i, (inputs, labels) in enumerate(dataset):
      if num_steps is not None and i >= num_steps:
        break
      outputs = self._eval_step_fn(inputs, labels)
      evaluator.update({k: _to_numpy(self.strategy, v) for k, v in outputs.items()})
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
  tf.io.gfile.makedirs(model_dir)
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
    losses = trainer.train()
    if not trainer.chief:
      tf.io.gfile.rmtree(trainer.manager.directory)
    return losses
  every = config.eval_interval
  metrics = {}
  while trainer.global_step < config.train_steps:
    target = (trainer.global_step // every + 1) * every if every else config.train_steps
    trainer.train(until_step=target)
    metrics = trainer.evaluate()
  return metrics or trainer.evaluate()

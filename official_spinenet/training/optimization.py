"""Learning-rate schedules and the SGD optimizer of the papers' training protocols.

SpineNet (Sec. 5.1) and NAS-FPN (Sec. 4) train RetinaNet with SGD, momentum 0.9,
a learning rate given for a batch of 256 and scaled linearly with the global batch
size, a linear warm-up, and either step decay (x0.1 near the end) or cosine decay.
The warm-up wrapper is Model Garden's `LinearWarmup`; the decays are tf_keras's.
"""

from typing import Optional, Sequence, Union

import tensorflow as tf
import tf_keras

# The batch size the papers quote learning rates for.
REFERENCE_BATCH_SIZE = 256
DECAY_SCHEDULES = ('constant', 'step', 'cosine')
# Model Garden's detection configs warm up from 0.0067 to a peak of 0.1 per 64 images.
WARMUP_START_FRACTION = 0.0667


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int,
                         reference_batch_size: int = REFERENCE_BATCH_SIZE) -> float:
  """The linear scaling rule: base_learning_rate * global_batch_size / reference."""
  if global_batch_size < 1 or reference_batch_size < 1:
    raise ValueError('Batch sizes must be >= 1, got global_batch_size='
                     f'{global_batch_size}, reference_batch_size={reference_batch_size}.')
  return base_learning_rate * global_batch_size / reference_batch_size


def build_learning_rate(base_learning_rate: float,
                        global_batch_size: int,
                        total_steps: int,
                        reference_batch_size: int = REFERENCE_BATCH_SIZE,
                        warmup_steps: int = 0,
                        warmup_learning_rate: Optional[float] = None,
                        decay: str = 'step',
                        decay_boundaries: Sequence[Union[int, float]] = (),
                        decay_factor: float = 0.1,
                        cosine_alpha: float = 0.0
                        ) -> Union[float, tf_keras.optimizers.schedules.LearningRateSchedule]:
  """A learning-rate schedule from the protocol's numbers.

  Args:
    base_learning_rate: learning rate for a batch of reference_batch_size.
    global_batch_size: batch over all replicas; the peak learning rate is
      base_learning_rate * global_batch_size / reference_batch_size.
    total_steps: training steps (the end of the cosine decay).
    reference_batch_size: batch size base_learning_rate is quoted for.
    warmup_steps: linear warm-up steps (0: none).
    warmup_learning_rate: learning rate at step 0 of the warm-up; default
      WARMUP_START_FRACTION x peak (Model Garden's detection configs: 0.0067 -> 0.1).
    decay: 'constant', 'step' (multiply by decay_factor at each boundary) or
      'cosine' (from the peak at step 0 to cosine_alpha x peak at total_steps; the
      warm-up replaces its first warmup_steps).
    decay_boundaries: step-decay boundaries; ints are steps, floats in (0, 1) are
      fractions of total_steps.
    decay_factor: multiplier applied at each step boundary.
    cosine_alpha: final learning rate of the cosine decay as a fraction of the peak.

  Returns:
    A float (constant, no warm-up) or a LearningRateSchedule of the step.

  Raises:
    ValueError: unknown decay, boundaries not increasing or beyond total_steps,
      warm-up longer than training.
  """
  if decay not in DECAY_SCHEDULES:
    raise ValueError(f'Unknown learning-rate decay {decay!r}; choose one of {DECAY_SCHEDULES}.')
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}.')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}.')
  peak = scaled_learning_rate(base_learning_rate, global_batch_size, reference_batch_size)

  if decay == 'step':
    boundaries = [int(round(b * total_steps)) if isinstance(b, float) and 0 < b < 1 else int(b)
                  for b in decay_boundaries]
    if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])) or any(
        not 0 < b <= total_steps for b in boundaries):
      raise ValueError(f'decay_boundaries must increase within (0, total_steps={total_steps}]; '
                       f'got {list(decay_boundaries)} -> steps {boundaries}.')
    if boundaries:
      values = [peak * decay_factor**i for i in range(len(boundaries) + 1)]
      schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
      schedule = peak
  elif decay == 'cosine':
    schedule = tf_keras.optimizers.schedules.CosineDecay(
        peak, decay_steps=total_steps, alpha=cosine_alpha)
  else:
    schedule = peak

  if warmup_steps > 0:
    from official.modeling.optimization import lr_schedule  # pylint: disable=g-import-not-at-top
    if warmup_learning_rate is None:
      warmup_learning_rate = peak * WARMUP_START_FRACTION
    schedule = lr_schedule.LinearWarmup(schedule, warmup_steps, warmup_learning_rate)
  return schedule


def build_sgd_optimizer(learning_rate, momentum: float = 0.9, nesterov: bool = False,
                        mixed_precision: str = 'float32') -> tf_keras.optimizers.Optimizer:
  """SGD with momentum; wrapped in dynamic loss scaling for float16.

  Args:
    learning_rate: a float or a LearningRateSchedule (e.g. build_learning_rate()).
    momentum: SGD momentum.
    nesterov: Nesterov momentum.
    mixed_precision: 'float32', 'bfloat16' or 'float16' (the last adds loss scaling).

  Returns:
    A tf_keras optimizer. Gradient clipping is done by the trainer on the
    all-reduced gradients, not here.
  """
  optimizer = tf_keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                      nesterov=nesterov)
  if mixed_precision == 'float16':
    optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
  return optimizer


def build_adam_optimizer(learning_rate, beta_1: float = 0.9, beta_2: float = 0.999,
                         epsilon: float = 1e-7,
                         mixed_precision: str = 'float32') -> tf_keras.optimizers.Optimizer:
  """Adam (not the papers' protocol: for short schedules such as the CPU demo).

  Args and returns as build_sgd_optimizer; beta_1, beta_2, epsilon are Adam's.
  """
  optimizer = tf_keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1,
                                       beta_2=beta_2, epsilon=epsilon)
  if mixed_precision == 'float16':
    optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
  return optimizer


def current_learning_rate(optimizer: tf_keras.optimizers.Optimizer) -> tf.Tensor:
  """The learning rate the optimizer applies at its current step."""
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  # `learning_rate` of a scheduled optimizer is the value at its last update;
  # the schedule itself gives the value at the current step.
  lr = getattr(inner, '_learning_rate', None) or inner.learning_rate
  if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
    return lr(inner.iterations)
  return tf.convert_to_tensor(lr)

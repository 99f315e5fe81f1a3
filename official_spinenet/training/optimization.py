"""Learning-rate schedules and the SGD optimizer of the papers' training protocols.

SpineNet (Sec. 5.1) and NAS-FPN (Sec. 4) train RetinaNet with SGD, momentum 0.9,
a learning rate given for a batch of 256 and scaled linearly with the global batch
size, a linear warm-up, and either step decay (x0.1 near the end) or cosine decay.
The warm-up wrapper is Model Garden's `LinearWarmup`; the decays are tf_keras's.
"""

import numbers
from typing import List, Optional, Sequence, Union

import tensorflow as tf
import tf_keras

from official_spinenet import model_garden

# The batch size the papers quote learning rates for.
REFERENCE_BATCH_SIZE = 256
DECAY_SCHEDULES = ('constant', 'step', 'cosine')
# Model Garden's detection configs warm up from 0.0067 to a peak of 0.1 per 64 images.
WARMUP_START_FRACTION = 0.0667


def scaled_learning_rate(
  base_learning_rate: float,
  global_batch_size: int,
  reference_batch_size: int = REFERENCE_BATCH_SIZE,
) -> float:
  """The linear scaling rule: base_learning_rate * global_batch_size / reference."""
  if global_batch_size < 1 or reference_batch_size < 1:
    raise ValueError(
      'Batch sizes must be >= 1, got global_batch_size='
      f'{global_batch_size}, reference_batch_size={reference_batch_size}.'
    )
  return base_learning_rate * global_batch_size / reference_batch_size


def build_learning_rate(
  base_learning_rate: float,
  global_batch_size: int,
  total_steps: int,
  reference_batch_size: int = REFERENCE_BATCH_SIZE,
  warmup_steps: int = 0,
  warmup_learning_rate: Optional[float] = None,
  decay: str = 'step',
  decay_boundaries: Sequence[float] = (),
  decay_factor: float = 0.1,
  cosine_alpha: float = 0.0,
) -> Union[float, tf_keras.optimizers.schedules.LearningRateSchedule]:
  """A learning-rate schedule from the protocol's numbers.

  Args:
    base_learning_rate: learning rate for a batch of reference_batch_size.
    global_batch_size: batch over all replicas; the peak learning rate is
      base_learning_rate * global_batch_size / reference_batch_size.
    total_steps: training steps (the end of the cosine decay).
    reference_batch_size: batch size base_learning_rate is quoted for.
    warmup_steps: linear warm-up, in steps (0: none). Steps, unlike the decay
      boundaries: a warm-up is a fixed number of updates that lets the weights
      settle, whatever the length of training (the papers quote it in steps).
    warmup_learning_rate: learning rate at step 0 of the warm-up; default
      WARMUP_START_FRACTION x peak (Model Garden's detection configs: 0.0067 -> 0.1).
    decay: 'constant', 'step' (multiply by decay_factor at each boundary) or
      'cosine' (from the peak at step 0 to cosine_alpha x peak at total_steps; the
      warm-up replaces its first warmup_steps).
    decay_boundaries: step-decay boundaries as fractions of training in (0, 1],
      increasing (e.g. [0.95, 0.98]: epochs 475 and 490 of 500); each becomes
      step round(fraction * total_steps), so a gin file's schedule follows any
      TRAIN_STEPS. Step counts (ints) are rejected.
    decay_factor: multiplier applied at each step boundary.
    cosine_alpha: final learning rate of the cosine decay as a fraction of the peak.

  Returns:
    A float (constant, no warm-up) or a LearningRateSchedule of the step.

  Raises:
    ValueError: unknown decay, boundaries that are not increasing fractions in
      (0, 1], warm-up longer than training.
  """
  if decay not in DECAY_SCHEDULES:
    raise ValueError(f'Unknown learning-rate decay {decay!r}; choose one of {DECAY_SCHEDULES}.')
  if total_steps < 1:
    raise ValueError(f'total_steps (TRAIN_STEPS) must be >= 1, got {total_steps}.')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f'learning_rate.warmup_steps={warmup_steps} must be in [0, total_steps]: training has '
      f'{total_steps} steps (TRAIN_STEPS / TrainerConfig.train_steps); shorten the warm-up '
      'or train longer.'
    )
  peak = scaled_learning_rate(base_learning_rate, global_batch_size, reference_batch_size)

  if decay == 'step':
    boundaries = boundary_steps(decay_boundaries, total_steps)
    if boundaries:
      values = [peak * decay_factor**i for i in range(len(boundaries) + 1)]
      schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
      schedule = peak
  elif decay == 'cosine':
    schedule = tf_keras.optimizers.schedules.CosineDecay(
      peak, decay_steps=total_steps, alpha=cosine_alpha
    )
  else:
    schedule = peak

  if warmup_steps > 0:
    if warmup_learning_rate is None:
      warmup_learning_rate = peak * WARMUP_START_FRACTION
    schedule = model_garden.load('lr_schedule').LinearWarmup(
      schedule, warmup_steps, warmup_learning_rate
    )
  return schedule


def boundary_steps(fractions: Sequence[float], total_steps: int) -> List[int]:
  """The steps of step-decay boundaries given as fractions of training.

  Args:
    fractions: increasing fractions in (0, 1] (`learning_rate.decay_boundaries`).
    total_steps: training steps.

  Returns:
    round(fraction * total_steps) for each fraction.

  Raises:
    ValueError: an int (a step count: the old unit), a value outside (0, 1], or
      boundaries that do not fall on increasing steps >= 1; the message names the
      gin binding `learning_rate.decay_boundaries`.
  """
  where = 'learning_rate.decay_boundaries'
  for b in fractions:
    if isinstance(b, numbers.Integral) or not isinstance(b, numbers.Real):
      raise ValueError(
        f'{where} are fractions of training in (0, 1] (e.g. [0.95, 0.98] for '
        f'epochs 475 and 490 of 500), not steps; got {list(fractions)}.'
      )
    if not 0 < b <= 1:
      raise ValueError(f'{where} must be fractions of training in (0, 1]; got {list(fractions)}.')
  steps = [int(round(b * total_steps)) for b in fractions]
  if any(s2 <= s1 for s1, s2 in zip(steps, steps[1:])) or any(s < 1 for s in steps):
    raise ValueError(
      f'{where} must increase and fall on distinct steps >= 1; got '
      f'{list(fractions)} -> steps {steps} of {total_steps}.'
    )
  return steps


def build_sgd_optimizer(
  learning_rate, momentum: float = 0.9, nesterov: bool = False, mixed_precision: str = 'float32'
) -> tf_keras.optimizers.Optimizer:
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
  optimizer = tf_keras.optimizers.SGD(
    learning_rate=learning_rate, momentum=momentum, nesterov=nesterov
  )
  if mixed_precision == 'float16':
    optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
  return optimizer


def build_adam_optimizer(
  learning_rate,
  beta_1: float = 0.9,
  beta_2: float = 0.999,
  epsilon: float = 1e-7,
  mixed_precision: str = 'float32',
) -> tf_keras.optimizers.Optimizer:
  """Adam (not the papers' protocol: for short schedules such as the CPU demo).

  Args and returns as build_sgd_optimizer; beta_1, beta_2, epsilon are Adam's.
  """
  optimizer = tf_keras.optimizers.Adam(
    learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon
  )
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

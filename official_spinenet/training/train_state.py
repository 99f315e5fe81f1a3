"""Training state you can trust: finite weights, loss growth, optimizer settings, temp files.

The trainer never saves a checkpoint whose loss or weights are not finite (it
checks every step's loss and, after each loop, every weight), nor one whose
largest weight grew MAX_WEIGHT_GROWTH-fold in one loop (finite but blown up: the
next step would be NaN), so the newest
checkpoint of a model dir is good by construction; `restore` still checks the
weights it loads and walks back to an older checkpoint if they are not finite
(checkpoints written before this check existed).

A resume applies the gin file's optimizer and learning-rate settings: the
schedule and the hyper-parameters are rebuilt from gin, and a constant learning
rate, which tf_keras optimizers keep in a checkpointed variable, is assigned
after the restore. Each save records the settings beside the checkpoints
(`SETTINGS_FILE`) so that the next run can say what changed.
"""

import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.utils import files

SETTINGS_FILE = 'optimizer_settings.json'
# Healthy training changes the largest weight by percents per loop; a thousand-fold
# jump in one loop is an update that blew the weights up.
MAX_WEIGHT_GROWTH = 1e3
# Files a killed save can leave behind: TensorFlow's `<prefix>_temp/` shard folder,
# the CheckpointManager's state temp file, and utils.files' `.tmp-<pid>-<hex>` files
# of what only the trainer writes.
_TEMP_PATTERNS = (
  re.compile(r'^ckpt-\d+_temp$'),
  re.compile(r'^checkpoint\.tmp[0-9a-f]+$'),
  re.compile(r'^(optimizer_settings\.json|operative_config\.gin)\.tmp-\d+-[0-9a-f]+$'),
)


def floating_variables(*modules: Any) -> List[tf.Variable]:
  """The float variables of models / optimizers (integer counters cannot be NaN)."""
  seen, result = set(), []
  for module in modules:
    for variable in module.variables:
      if variable.dtype.is_floating and id(variable) not in seen:
        seen.add(id(variable))
        result.append(variable)
  return result


def weight_check_fn(variables: Sequence[tf.Variable], model_variables: Sequence[tf.Variable]):
  """A compiled () -> (every element of variables is finite, largest |model weight|)."""

  @tf.function(autograph=False)  # a fixed list of ops: nothing to convert, faster to trace
  def check():
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in variables]))
    # float32 for the stack: a model may mix float64 layers in.
    largest = tf.reduce_max(
      tf.stack([tf.cast(tf.reduce_max(tf.abs(v)), tf.float32) for v in model_variables])
    )
    return finite, largest

  return check


class LossWatch:
  """Tracks the smallest step loss and warns when the loss grows by orders of magnitude.

  The baseline is the smallest single-step loss seen (the first step's loss is
  computed before any update), not a loop mean that a divergence inside the first
  loop would already inflate.
  """

  def __init__(self, warn_factor: float, stop_factor: float):
    self.warn_factor = warn_factor
    self.stop_factor = stop_factor
    self.lowest = math.inf
    self.lowest_step = 0
    self.warnings: List[str] = []
    self._warned_level = -1

  def update(self, step: int, lowest: float, last: float) -> None:
    """Takes one loop's smallest and last step loss.

    Raises:
      FloatingPointError: the last loss is stop_factor x the smallest or more.
    """
    if lowest < self.lowest:
      self.lowest, self.lowest_step = lowest, step
    if self.lowest <= 0:
      return
    growth = last / self.lowest
    if self.stop_factor and growth >= self.stop_factor:
      raise FloatingPointError(
        f'The training loss grew {growth:.1e}x, from {self.lowest:.4g} (by step '
        f'{self.lowest_step}) to {last:.4g} at step {step}: the run diverged. Lower the '
        'learning rate, lengthen the warm-up or set TrainerConfig.gradient_clip_norm '
        '(TrainerConfig.max_loss_growth sets this limit; 0 turns it off).'
      )
    if self.warn_factor and growth >= self.warn_factor:
      # Once at warn_factor, then again at each further factor of 10.
      level = math.floor(math.log10(growth / self.warn_factor))
      if level > self._warned_level:
        self._warned_level = level
        message = (
          f'the training loss grew {growth:.1e}x, from {self.lowest:.4g} (by step '
          f'{self.lowest_step}) to {last:.4g} at step {step}; the run may be diverging '
          '(lower the learning rate or set gradient_clip_norm)'
        )
        self.warnings.append(message)
        logging.warning('Warning: %s.', message)


# ---- optimizer settings -------------------------------------------------------


def _flatten(prefix: str, value: Any, out: Dict[str, Any]) -> None:
  if isinstance(value, dict):
    for key, item in value.items():
      if key not in ('name', 'is_legacy_optimizer'):
        _flatten(f'{prefix}.{key}' if prefix else str(key), item, out)
  else:
    out[prefix] = files.json_safe(value)


def optimizer_settings(optimizer: tf_keras.optimizers.Optimizer, learning_rate: Any) -> Dict:
  """{setting: value} of the optimizer as built from gin (class, hyper-parameters, schedule)."""
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  config = {k: v for k, v in inner.get_config().items() if k != 'learning_rate'}
  if isinstance(learning_rate, tf_keras.optimizers.schedules.LearningRateSchedule):
    try:
      schedule = {'schedule': type(learning_rate).__name__, **learning_rate.get_config()}
    except NotImplementedError:
      schedule = {'schedule': type(learning_rate).__name__}
  else:
    schedule = {'schedule': 'constant', 'value': float(learning_rate)}
  flat = {
    'optimizer': type(optimizer).__name__
    + (f'({type(inner).__name__})' if inner is not optimizer else '')
  }
  _flatten('', config, flat)
  _flatten('learning_rate', schedule, flat)
  return {k: v for k, v in flat.items() if isinstance(v, (str, int, float, bool, type(None)))}


def settings_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
  """'name old -> new' for every setting that changed."""
  return [
    f'{name} {saved.get(name, "(unset)")} -> {current.get(name, "(unset)")}'
    for name in sorted(set(saved) | set(current))
    if saved.get(name) != current.get(name)
  ]


def read_settings(model_dir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(model_dir, SETTINGS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    return files.read_json(path, 'optimizer settings')
  except ValueError as e:
    logging.warning('Ignoring %s', e)
    return None


def checkpoint_learning_rate(path: str) -> Optional[float]:
  """The constant learning rate a checkpoint's optimizer holds, if it holds one."""
  reader = tf.train.load_checkpoint(path)
  for key in reader.get_variable_to_shape_map():
    if key.endswith('_learning_rate/.ATTRIBUTES/VARIABLE_VALUE') and 'current' not in key:
      return float(np.asarray(reader.get_tensor(key)))
  return None


def remove_orphaned_temp_files(model_dir: str) -> List[str]:
  """Deletes what a save killed half-way left in model_dir; returns the names removed."""
  removed = []
  if not tf.io.gfile.isdir(model_dir):
    return removed
  for name in tf.io.gfile.listdir(model_dir):
    name = name.rstrip('/')
    if any(p.match(name) for p in _TEMP_PATTERNS):
      path = os.path.join(model_dir, name)
      try:
        if tf.io.gfile.isdir(path):
          tf.io.gfile.rmtree(path)
        else:
          tf.io.gfile.remove(path)
        removed.append(name)
      except tf.errors.OpError as e:
        logging.warning('Could not remove %s: %s', path, e)
  if removed:
    logging.info('Removed what an interrupted save left in %s: %s', model_dir, removed)
  return removed


def is_temp_file(name: str) -> bool:
  """True for the names remove_orphaned_temp_files deletes (for tools that check)."""
  return any(p.match(name.rstrip('/')) for p in _TEMP_PATTERNS)

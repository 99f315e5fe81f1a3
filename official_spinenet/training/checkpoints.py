"""Training checkpoints: what they hold, where each worker writes, partial restores.

A training checkpoint is `tf.train.Checkpoint(model=, optimizer=, **named parts)`,
where the named parts are the task's sub-modules ('backbone', 'decoder', 'head').
Naming the parts at the root makes their keys ('backbone/...') the same as those
of the checkpoints `spinenet-convert-checkpoint` writes, so one partial-restore
path (`restore_modules`) reads both.
"""

import os
from typing import Dict, Sequence

from absl import logging
import tensorflow as tf

from official_spinenet.utils import checkpoint_paths

# How error messages name the setting (a gin binding of spinenet-train).
_SETTING = 'TrainerConfig.init_checkpoint'

# init_checkpoint_modules that are not plain sub-modules.
ALL = 'all'
HEAD_WITHOUT_CLASSIFIER = 'head_without_classifier'


def worker_checkpoint_dir(model_dir: str, chief: bool, worker: str) -> str:
  """The chief writes to model_dir; other workers to a scratch dir they delete.

  Under MultiWorkerMirroredStrategy every worker must take part in a save, but
  only one copy is wanted.
  """
  return model_dir if chief else os.path.join(model_dir, '.worker_tmp', worker)


def _head_without_classifier(head: tf.Module) -> tf.Module:
  """A view of a RetinaNetHead's towers and box predictor, without `_classifier`.

  Restoring through it loads a checkpoint trained with another number of classes:
  the class predictor keeps its fresh (prior-probability) initialisation.
  """
  parts = {
    name: getattr(head, name)
    for name in ('_cls_convs', '_cls_norms', '_box_convs', '_box_norms', '_box_regressor')
  }
  return tf.train.Checkpoint(**parts)


def restore_modules(path: str, items: Dict[str, tf.Module], modules: Sequence[str]) -> None:
  """Restores the named modules' weights from a checkpoint (no optimizer state).

  Args:
    path: a checkpoint prefix, a `<prefix>.index` file, or a directory (its
      latest checkpoint is used).
    items: the task's checkpoint items: 'model' plus sub-modules by name.
    modules: names from items, or 'all' (the whole model), or
      'head_without_classifier' (every head weight except the class predictor).

  Raises:
    ValueError: no checkpoint at path, an unknown module name, or a module whose
      variables are missing from or mis-shaped in the checkpoint.
  """
  path = checkpoint_paths.resolve_checkpoint(path, flag=_SETTING)
  known = sorted(set(items) - {'model'}) + [ALL, HEAD_WITHOUT_CLASSIFIER]
  parts = {}
  for name in modules:
    if name == ALL:
      parts.update((k, v) for k, v in items.items() if k != 'model')
    elif name == HEAD_WITHOUT_CLASSIFIER and 'head' in items:
      parts['head'] = _head_without_classifier(items['head'])
    elif name in items and name != 'model':
      parts[name] = items[name]
    else:
      raise ValueError(f'Unknown init_checkpoint_modules entry {name!r}; choose from {known}.')
  available = {name.split('/', 1)[0] for name, _ in tf.train.list_variables(path)}
  missing = sorted(set(parts) - available)
  if missing:
    raise ValueError(
      f'{_SETTING} {path!r} has no {missing} (it holds {sorted(available)}). '
      'Checkpoints of other codebases must first be converted with '
      'spinenet-convert-checkpoint.'
    )
  status = tf.train.Checkpoint(**parts).read(path)
  try:
    status.expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f'{_SETTING} {path!r} does not fit modules {list(modules)}: {e}') from e
  logging.info('Initialised %s from %s.', ', '.join(sorted(parts)), path)

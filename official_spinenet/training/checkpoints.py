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


def check_model_dir(model_dir: str) -> None:
  """Creates model_dir and writes a probe file in it, before anything is built.

  Raises:
    ValueError: naming --model_dir, if it cannot be created or written.
  """
  probe = os.path.join(model_dir, f'.write_probe-{os.getpid()}')
  try:
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('')
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    message = getattr(e, 'message', None) or str(e)
    raise ValueError(f'--model_dir {model_dir!r} is not writable: {message}') from e


def _required_parts(modules: Sequence[str]) -> Sequence[str]:
  """The top-level checkpoint names the modules need (all: any)."""
  return sorted({'head' if m == HEAD_WITHOUT_CLASSIFIER else m for m in modules if m != ALL})


def check_init_checkpoint(path: str, modules: Sequence[str]) -> str:
  """Resolves init_checkpoint and checks that it holds the modules asked for (cheap: its index).

  Returns:
    The checkpoint prefix.

  Raises:
    ValueError: no checkpoint at path, or one without the named modules.
  """
  path = checkpoint_paths.resolve_checkpoint(path, flag=_SETTING)
  available = {name.split('/', 1)[0] for name, _ in tf.train.list_variables(path)}
  missing = sorted(set(_required_parts(modules)) - available)
  if missing:
    raise ValueError(
      f'{_SETTING} {path!r} has no {missing} (it holds {sorted(available)}). '
      'Checkpoints of other codebases must first be converted with '
      'spinenet-convert-checkpoint.'
    )
  return path


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
      variables are missing from or mis-shaped in the checkpoint (a checkpoint of
      another model).
  """
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
  path = check_init_checkpoint(path, sorted(parts))
  try:
    status = tf.train.Checkpoint(**parts).read(path)
    status.expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
    first_line = str(e).strip().splitlines()[0][:400]
    raise ValueError(
      f'{_SETTING} {path!r} does not fit modules {list(modules)} of this model (was it '
      f'written by another model or model size?): {first_line}'
    ) from e
  logging.info('Initialised %s from %s.', ', '.join(sorted(parts)), path)

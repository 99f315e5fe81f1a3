"""Finding the checkpoint a user means: a prefix, a `<prefix>.index` file or a folder."""

import tensorflow as tf


def resolve_checkpoint(path: str, flag: str = '--checkpoint') -> str:
  """The checkpoint prefix for a prefix, a `<prefix>.index` file, or a model dir.

  A folder means its newest checkpoint (the one its `checkpoint` file names).

  Args:
    path: what the user gave.
    flag: how error messages name the setting (e.g. '--init_checkpoint').

  Raises:
    ValueError: nothing is given, the folder holds no checkpoint, or no
      `<prefix>.index` exists (the message names the path and the flag).
  """
  if not path:
    raise ValueError(
      f'No checkpoint given: pass {flag} (a checkpoint prefix such as '
      'model_dir/ckpt-1500, or a model dir).'
    )
  if path.endswith('.index'):
    path = path[: -len('.index')]
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(
        f'{flag}: no checkpoint in directory {path!r} (no "checkpoint" file '
        'naming a ckpt-N). Train first, or pass a prefix.'
      )
    path = latest
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'{flag}: no checkpoint at {path!r} (no {path}.index).')
  return path

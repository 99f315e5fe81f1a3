"""Brings checkpoints written by TF Model Garden's `official.vision` into our models.

Our backbones keep the published checkpoints' object layout (see
`modeling/layers/graph_layout.py`), so converting is a matter of finding where the
backbone sits in the source checkpoint (a bare backbone, an `official.vision`
training checkpoint of RetinaNet, Mask R-CNN or a classifier), checking every
variable is there with the right shape, and writing a checkpoint in our layout:
`tf.train.Checkpoint(backbone=...)`, which our task models restore from.
"""

import os
import shutil
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

# Where `official.vision` puts the backbone: training checkpoints carry it both as a
# top-level item (`backbone/`) and inside the model (`model/_backbone/`).
SOURCE_PREFIX_CANDIDATES = ('backbone', 'model/_backbone', 'model/backbone', 'model')
_OWN_PREFIX = 'backbone'
_SKIPPED_KEYS = ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter')


def _variable_keys(shape_map: Dict[str, Sequence[int]], prefix: str
                   ) -> Dict[str, Tuple[int, ...]]:
  """{key relative to prefix: shape} for the variables under `prefix/`."""
  head = prefix.rstrip('/') + '/'
  return {k[len(head):]: tuple(v) for k, v in shape_map.items()
          if k.startswith(head) and not k.startswith(_SKIPPED_KEYS)}


def expected_keys(backbone: tf_keras.Model) -> Dict[str, Tuple[int, ...]]:
  """The checkpoint keys and shapes of `backbone` in our layout (relative keys)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = tf.train.Checkpoint(**{_OWN_PREFIX: backbone}).write(os.path.join(tmp, 'ckpt'))
    shape_map = dict(tf.train.list_variables(path))
  return _variable_keys(shape_map, _OWN_PREFIX)


def find_source_prefix(shape_map: Dict[str, Sequence[int]],
                       wanted: Dict[str, Tuple[int, ...]]) -> str:
  """The prefix under which the source checkpoint holds the most wanted variables."""
  best, best_hits = None, 0
  for prefix in SOURCE_PREFIX_CANDIDATES:
    hits = len(set(_variable_keys(shape_map, prefix)) & set(wanted))
    if hits > best_hits:
      best, best_hits = prefix, hits
  if best is None:
    sample = sorted(k for k in shape_map if not k.startswith(_SKIPPED_KEYS))[:5]
    raise ValueError(
        'Found no backbone variables in the source checkpoint under any of '
        f'{list(SOURCE_PREFIX_CANDIDATES)}; its first keys are {sample}. Pass '
        '--source_prefix to name where the backbone is.')
  return best


def compare_keys(source: Dict[str, Tuple[int, ...]], wanted: Dict[str, Tuple[int, ...]],
                 source_name: str, model_name: str) -> None:
  """Raises a ValueError that names missing and mis-shaped variables."""
  missing = sorted(k for k in wanted if k not in source)
  mis_shaped = sorted((k, source[k], wanted[k]) for k in wanted
                      if k in source and source[k] != wanted[k])
  if not missing and not mis_shaped:
    return
  lines = [f'Checkpoint {source_name} does not match {model_name}:']
  if missing:
    lines.append(f'  {len(missing)} of {len(wanted)} variables are missing, e.g. '
                 + ', '.join(missing[:8]))
  if mis_shaped:
    lines.append(f'  {len(mis_shaped)} variables have the wrong shape, e.g. ' + ', '.join(
        f'{k}: checkpoint {s} vs model {w}' for k, s, w in mis_shaped[:8]))
  lines.append('  Check --model and --model_id (and min/max level) against the model '
               'that wrote the checkpoint.')
  raise ValueError('\n'.join(lines))


def _nested_checkpoint(prefix: str, backbone: tf_keras.Model) -> tf.train.Checkpoint:
  """A Checkpoint whose object path `prefix` leads to `backbone`."""
  parts = prefix.strip('/').split('/')
  node = backbone
  for part in reversed(parts[1:]):
    holder = tf.Module()
    setattr(holder, part, node)
    node = holder
  return tf.train.Checkpoint(**{parts[0]: node})


def _write_atomically(backbone: tf_keras.Model, output_prefix: str) -> str:
  """Writes `Checkpoint(backbone=...)` to `output_prefix` via a temporary folder."""
  out_dir = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(out_dir, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix='.convert-', dir=out_dir)
  try:
    name = os.path.basename(output_prefix)
    tf.train.Checkpoint(**{_OWN_PREFIX: backbone}).write(os.path.join(tmp_dir, name))
    files = sorted(os.listdir(tmp_dir), key=lambda f: f.endswith('.index'))
    for f in files:  # The index goes last: a reader sees the checkpoint whole or not at all.
      os.replace(os.path.join(tmp_dir, f), os.path.join(out_dir, f))
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return os.path.join(out_dir, os.path.basename(output_prefix))


def convert_backbone_checkpoint(source: str, backbone: tf_keras.Model, output_prefix: str,
                                source_prefix: Optional[str] = None,
                                model_name: str = 'the model') -> str:
  """Converts a Model Garden checkpoint's backbone into our layout.

  Args:
    source: checkpoint prefix or a folder holding checkpoints (latest is used).
    backbone: our backbone, built with the architecture of the source.
    output_prefix: where to write the converted checkpoint.
    source_prefix: the backbone's object path in the source; found if None.
    model_name: how error messages name the model (e.g. 'SpineNet-49').

  Returns:
    The path prefix of the written checkpoint.

  Raises:
    ValueError: the source is missing, or does not hold this architecture.
  """
  if tf.io.gfile.isdir(source):
    latest = tf.train.latest_checkpoint(source)
    if latest is None:
      raise ValueError(f'No checkpoint found in folder {source}.')
    source = latest
  try:
    shape_map = dict(tf.train.list_variables(source))
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise ValueError(f'Cannot read checkpoint {source}: {e}') from e
  wanted = expected_keys(backbone)
  prefix = source_prefix or find_source_prefix(shape_map, wanted)
  compare_keys(_variable_keys(shape_map, prefix), wanted, f'{source} ({prefix}/)',
               model_name)
  status = _nested_checkpoint(prefix, backbone).read(source)
  status.expect_partial().assert_existing_objects_matched()
  return _write_atomically(backbone, output_prefix)


def restore_backbone(backbone: tf_keras.Model, checkpoint: str) -> None:
  """Restores a checkpoint in our layout (written by the converter) into `backbone`."""
  status = tf.train.Checkpoint(**{_OWN_PREFIX: backbone}).read(checkpoint)
  status.expect_partial().assert_existing_objects_matched()


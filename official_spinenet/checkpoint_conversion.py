"""Brings checkpoints written by TF Model Garden's `official.vision` into our models.

Our backbones and decoders keep the published checkpoints' object layout (see
`modeling/layers/graph_layout.py`), so converting is a matter of finding where each
part sits in the source checkpoint (a bare backbone or decoder, an `official.vision`
training checkpoint of RetinaNet, Mask R-CNN or a classifier), checking every
variable is there with the right shape, and writing a checkpoint in our layout:
`tf.train.Checkpoint(backbone=..., decoder=...)`, which our task models restore from.
"""

import os
import shutil
import tempfile
from typing import Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras

# Where `official.vision` puts each part: training checkpoints carry it both as a
# top-level item (`backbone/`, `decoder/`) and inside the model (`model/_backbone/`).
SOURCE_PREFIX_CANDIDATES = ('backbone', 'model/_backbone', 'model/backbone', 'model')
DECODER_SOURCE_PREFIX_CANDIDATES = ('decoder', 'model/_decoder', 'model/decoder')
PART_SOURCE_PREFIX_CANDIDATES = {'backbone': SOURCE_PREFIX_CANDIDATES,
                                 'decoder': DECODER_SOURCE_PREFIX_CANDIDATES}
# How error messages point at the settings of each part (tools/convert_checkpoint.py).
_PREFIX_FLAGS = {'backbone': '--source_prefix', 'decoder': '--decoder_source_prefix'}
_ARCHITECTURE_FLAGS = {
    'backbone': '--model and --model_id (and min/max level)',
    'decoder': '--decoder and its --decoder_* flags (and min/max level)',
}
_SKIPPED_KEYS = ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter')


def _variable_keys(shape_map: Dict[str, Sequence[int]], prefix: str
                   ) -> Dict[str, Tuple[int, ...]]:
  """{key relative to prefix: shape} for the variables under `prefix/`."""
  head = prefix.rstrip('/') + '/'
  return {k[len(head):]: tuple(v) for k, v in shape_map.items()
          if k.startswith(head) and not k.startswith(_SKIPPED_KEYS)}


def expected_keys(module: tf.Module, part: str = 'backbone') -> Dict[str, Tuple[int, ...]]:
  """The checkpoint keys and shapes of `module` in our layout (relative to `part/`)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = tf.train.Checkpoint(**{part: module}).write(os.path.join(tmp, 'ckpt'))
    shape_map = dict(tf.train.list_variables(path))
  return _variable_keys(shape_map, part)


def find_source_prefix(shape_map: Dict[str, Sequence[int]],
                       wanted: Dict[str, Tuple[int, ...]],
                       candidates: Sequence[str] = SOURCE_PREFIX_CANDIDATES,
                       part: str = 'backbone') -> str:
  """The prefix under which the source checkpoint holds the most wanted variables."""
  best, best_hits = None, 0
  for prefix in candidates:
    hits = len(set(_variable_keys(shape_map, prefix)) & set(wanted))
    if hits > best_hits:
      best, best_hits = prefix, hits
  if best is None:
    sample = sorted(k for k in shape_map if not k.startswith(_SKIPPED_KEYS))[:5]
    raise ValueError(
        f'Found no {part} variables in the source checkpoint under any of '
        f'{list(candidates)}; its first keys are {sample}. Pass '
        f'{_PREFIX_FLAGS.get(part, "the source prefix")} to name where the {part} is.')
  return best


def compare_keys(source: Dict[str, Tuple[int, ...]], wanted: Dict[str, Tuple[int, ...]],
                 source_name: str, model_name: str, part: str = 'backbone') -> None:
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
  lines.append(f'  Check {_ARCHITECTURE_FLAGS.get(part, "the architecture")} against the '
               'model that wrote the checkpoint.')
  raise ValueError('\n'.join(lines))


def _nested_checkpoint(prefix: str, module: tf.Module) -> tf.train.Checkpoint:
  """A Checkpoint whose object path `prefix` leads to `module`."""
  parts = prefix.strip('/').split('/')
  node = module
  for part in reversed(parts[1:]):
    holder = tf.Module()
    setattr(holder, part, node)
    node = holder
  return tf.train.Checkpoint(**{parts[0]: node})


def _write_atomically(modules: Mapping[str, tf.Module], output_prefix: str) -> str:
  """Writes `Checkpoint(**modules)` to `output_prefix` via a temporary folder."""
  out_dir = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(out_dir, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix='.convert-', dir=out_dir)
  try:
    name = os.path.basename(output_prefix)
    tf.train.Checkpoint(**modules).write(os.path.join(tmp_dir, name))
    files = sorted(os.listdir(tmp_dir), key=lambda f: f.endswith('.index'))
    for f in files:  # The index goes last: a reader sees the checkpoint whole or not at all.
      os.replace(os.path.join(tmp_dir, f), os.path.join(out_dir, f))
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return os.path.join(out_dir, os.path.basename(output_prefix))


def convert_checkpoint(source: str, modules: Mapping[str, tf.Module], output_prefix: str,
                       source_prefixes: Optional[Mapping[str, Optional[str]]] = None,
                       model_names: Optional[Mapping[str, str]] = None) -> str:
  """Converts the parts of a Model Garden checkpoint into our layout.

  Args:
    source: checkpoint prefix or a folder holding checkpoints (latest is used).
    modules: our parts by checkpoint name, 'backbone' and/or 'decoder', built with
      the architecture of the source.
    output_prefix: where to write the converted checkpoint; it holds every part.
    source_prefixes: each part's object path in the source, e.g. {'decoder':
      'model/_decoder'}; a missing or None entry is found among the usual places
      (`PART_SOURCE_PREFIX_CANDIDATES`).
    model_names: how error messages name each part (e.g. {'backbone': 'SpineNet-49'}).

  Returns:
    The path prefix of the written checkpoint.

  Raises:
    ValueError: the source is missing, or does not hold this architecture; nothing
      is written then.
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
  source_prefixes = dict(source_prefixes or {})
  model_names = dict(model_names or {})
  readers = []
  for part, module in modules.items():
    if part not in PART_SOURCE_PREFIX_CANDIDATES:
      raise ValueError(f'Unknown checkpoint part {part!r}; choose from '
                       f'{sorted(PART_SOURCE_PREFIX_CANDIDATES)}.')
    wanted = expected_keys(module, part)
    prefix = source_prefixes.get(part) or find_source_prefix(
        shape_map, wanted, PART_SOURCE_PREFIX_CANDIDATES[part], part)
    compare_keys(_variable_keys(shape_map, prefix), wanted, f'{source} ({prefix}/)',
                 model_names.get(part, f'the {part}'), part)
    readers.append(_nested_checkpoint(prefix, module))
  for reader in readers:
    reader.read(source).expect_partial().assert_existing_objects_matched()
  return _write_atomically(modules, output_prefix)


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
  return convert_checkpoint(source, {'backbone': backbone}, output_prefix,
                            {'backbone': source_prefix}, {'backbone': model_name})


def restore_converted(checkpoint: str, **modules: tf.Module) -> None:
  """Restores a checkpoint in our layout (written by the converter) into the parts.

  E.g. `restore_converted(path, backbone=backbone, decoder=decoder)`.
  """
  status = tf.train.Checkpoint(**modules).read(checkpoint)
  status.expect_partial().assert_existing_objects_matched()


def restore_backbone(backbone: tf_keras.Model, checkpoint: str) -> None:
  """Restores a checkpoint in our layout (written by the converter) into `backbone`."""
  restore_converted(checkpoint, backbone=backbone)

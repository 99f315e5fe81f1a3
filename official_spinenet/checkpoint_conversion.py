"""Brings checkpoints written by TF Model Garden's `official.vision` into our models.

Our backbones and decoders keep the published checkpoints' object layout (see
`modeling/layers/graph_layout.py`), so converting is a matter of finding where each
part sits in the source checkpoint (a bare backbone or decoder, an `official.vision`
training checkpoint of RetinaNet, Mask R-CNN or a classifier), checking every
variable is there with the right shape, and writing a checkpoint in our layout:
`tf.train.Checkpoint(backbone=..., decoder=...)`, which our task models restore from.
`spinenet-convert-checkpoint` is the command line of `convert_architecture`.
"""

import os
import tempfile
from typing import Dict, Mapping, Optional, Sequence, Tuple
import uuid

import tensorflow as tf
import tf_keras

from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.utils import checkpoint_paths
from official_spinenet.utils import files

# Where `official.vision` puts each part: training checkpoints carry it both as a
# top-level item (`backbone/`, `decoder/`) and inside the model (`model/_backbone/`).
SOURCE_PREFIX_CANDIDATES = ('backbone', 'model/_backbone', 'model/backbone', 'model')
DECODER_SOURCE_PREFIX_CANDIDATES = ('decoder', 'model/_decoder', 'model/decoder')
PART_SOURCE_PREFIX_CANDIDATES = {
  'backbone': SOURCE_PREFIX_CANDIDATES,
  'decoder': DECODER_SOURCE_PREFIX_CANDIDATES,
}
# How error messages point at the settings of each part (spinenet-convert-checkpoint).
_PREFIX_FLAGS = {'backbone': '--source_prefix', 'decoder': '--decoder_source_prefix'}
_ARCHITECTURE_FLAGS = {
  'backbone': '--model and --model_id (and min/max level)',
  'decoder': '--decoder and its --decoder_* flags (and min/max level)',
}
_SKIPPED_KEYS = ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter')


def _variable_keys(shape_map: Dict[str, Sequence[int]], prefix: str) -> Dict[str, Tuple[int, ...]]:
  """{key relative to prefix: shape} for the variables under `prefix/`."""
  head = prefix.rstrip('/') + '/'
  return {
    k[len(head) :]: tuple(v)
    for k, v in shape_map.items()
    if k.startswith(head) and not k.startswith(_SKIPPED_KEYS)
  }


def expected_keys(module: tf.Module, part: str = 'backbone') -> Dict[str, Tuple[int, ...]]:
  """The checkpoint keys and shapes of `module` in our layout (relative to `part/`)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = tf.train.Checkpoint(**{part: module}).write(os.path.join(tmp, 'ckpt'))
    shape_map = dict(tf.train.list_variables(path))
  return _variable_keys(shape_map, part)


def find_source_prefix(
  shape_map: Dict[str, Sequence[int]],
  wanted: Dict[str, Tuple[int, ...]],
  candidates: Sequence[str] = SOURCE_PREFIX_CANDIDATES,
  part: str = 'backbone',
) -> str:
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
      f'{_PREFIX_FLAGS.get(part, "the source prefix")} to name where the {part} is.'
    )
  return best


def compare_keys(
  source: Dict[str, Tuple[int, ...]],
  wanted: Dict[str, Tuple[int, ...]],
  source_name: str,
  model_name: str,
  part: str = 'backbone',
) -> None:
  """Raises a ValueError that names missing and mis-shaped variables."""
  missing = sorted(k for k in wanted if k not in source)
  mis_shaped = sorted(
    (k, source[k], wanted[k]) for k in wanted if k in source and source[k] != wanted[k]
  )
  if not missing and not mis_shaped:
    return
  lines = [f'Checkpoint {source_name} does not match {model_name}:']
  if missing:
    lines.append(
      f'  {len(missing)} of {len(wanted)} variables are missing, e.g. ' + ', '.join(missing[:8])
    )
  if mis_shaped:
    lines.append(
      f'  {len(mis_shaped)} variables have the wrong shape, e.g. '
      + ', '.join(f'{k}: checkpoint {s} vs model {w}' for k, s, w in mis_shaped[:8])
    )
  lines.append(
    f'  Check {_ARCHITECTURE_FLAGS.get(part, "the architecture")} against the '
    'model that wrote the checkpoint.'
  )
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
  """Writes `Checkpoint(**modules)` to `output_prefix` via a temporary folder beside it.

  A checkpoint is several files, so no single-file atomic write fits: they are
  written into a hidden folder next to the output, then renamed into place one by
  one with the index last (a reader that finds `<prefix>.index` finds its data).
  """
  files.make_parent_dirs(output_prefix)
  out_dir, name = os.path.split(output_prefix)
  tmp_dir = os.path.join(out_dir, f'.convert-{uuid.uuid4().hex[:8]}')
  try:
    tf.train.Checkpoint(**modules).write(os.path.join(tmp_dir, name))
    for f in sorted(tf.io.gfile.listdir(tmp_dir), key=lambda f: f.endswith('.index')):
      tf.io.gfile.rename(os.path.join(tmp_dir, f), os.path.join(out_dir, f), overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp_dir):
      tf.io.gfile.rmtree(tmp_dir)
  return output_prefix


def convert_checkpoint(
  source: str,
  modules: Mapping[str, tf.Module],
  output_prefix: str,
  source_prefixes: Optional[Mapping[str, Optional[str]]] = None,
  model_names: Optional[Mapping[str, str]] = None,
) -> str:
  """Converts the parts of a Model Garden checkpoint into our layout.

  Args:
    source: checkpoint prefix, `<prefix>.index`, or a folder holding checkpoints
      (latest is used).
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
  source = checkpoint_paths.resolve_checkpoint(source, flag='--source')
  try:
    shape_map = dict(tf.train.list_variables(source))
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise ValueError(f'Cannot read checkpoint {source}: {e}') from e
  source_prefixes = dict(source_prefixes or {})
  model_names = dict(model_names or {})
  readers = []
  for part, module in modules.items():
    if part not in PART_SOURCE_PREFIX_CANDIDATES:
      raise ValueError(
        f'Unknown checkpoint part {part!r}; choose from {sorted(PART_SOURCE_PREFIX_CANDIDATES)}.'
      )
    wanted = expected_keys(module, part)
    prefix = source_prefixes.get(part) or find_source_prefix(
      shape_map, wanted, PART_SOURCE_PREFIX_CANDIDATES[part], part
    )
    compare_keys(
      _variable_keys(shape_map, prefix),
      wanted,
      f'{source} ({prefix}/)',
      model_names.get(part, f'the {part}'),
      part,
    )
    readers.append(_nested_checkpoint(prefix, module))
  for reader in readers:
    reader.read(source).expect_partial().assert_existing_objects_matched()
  return _write_atomically(modules, output_prefix)


def convert_backbone_checkpoint(
  source: str,
  backbone: tf_keras.Model,
  output_prefix: str,
  source_prefix: Optional[str] = None,
  model_name: str = 'the model',
) -> str:
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
  return convert_checkpoint(
    source,
    {'backbone': backbone},
    output_prefix,
    {'backbone': source_prefix},
    {'backbone': model_name},
  )


DECODERS = ('none', 'nasfpn')


def build_parts(
  backbone: str = 'spinenet',
  model_id: str = '49',
  min_level: int = 3,
  max_level: int = 7,
  decoder: str = 'none',
  decoder_num_filters: int = 256,
  decoder_num_repeats: int = 5,
  decoder_use_separable_conv: bool = False,
) -> Tuple[Dict[str, tf.Module], Dict[str, str]]:
  """Our parts with the source model's architecture, and how messages name them.

  Args:
    backbone: a family of `factory.BACKBONES` ('resnet' is Model Garden's ResNet,
      which has our layout already: the converter checks and copies it like any
      other backbone).
    model_id: e.g. '49S', '49', '96', '143', '143L', '190'; '50' for resnet.
    min_level, max_level: endpoint levels of the source model.
    decoder: 'none' or 'nasfpn'.
    decoder_num_filters, decoder_num_repeats, decoder_use_separable_conv: the
      source NAS-FPN's settings.

  Returns:
    ({'backbone': ..., ['decoder': ...]}, {part: name for error messages}).
  """
  if decoder not in DECODERS:
    raise ValueError(f'Unknown decoder {decoder!r}; choose one of {DECODERS}.')
  built = factory.build_backbone(
    backbone, model_id, min_level=min_level, max_level=max_level, input_specs=[None, None, None, 3]
  )
  parts = {'backbone': built}
  names = {'backbone': f'{backbone}-{model_id}'}
  if decoder == 'nasfpn':
    parts['decoder'] = nasfpn.NASFPN(
      input_specs=built.output_specs,
      min_level=min_level,
      max_level=max_level,
      num_filters=decoder_num_filters,
      num_repeats=decoder_num_repeats,
      use_separable_conv=decoder_use_separable_conv,
    )
    names['decoder'] = f'NAS-FPN {decoder_num_repeats}@{decoder_num_filters}'
  return parts, names


def convert_architecture(
  source: str,
  output_prefix: str,
  source_prefixes: Optional[Mapping[str, Optional[str]]] = None,
  **architecture,
) -> Tuple[str, Sequence[str]]:
  """Builds our parts for the source's architecture and converts the checkpoint.

  Args:
    source: checkpoint prefix, `<prefix>.index`, or a folder (its latest).
    output_prefix: where to write the converted checkpoint.
    source_prefixes: each part's object path in the source (None: found).
    **architecture: the arguments of `build_parts`.

  Returns:
    (the written checkpoint prefix, the names of the parts it holds).
  """
  parts, names = build_parts(**architecture)
  path = convert_checkpoint(source, parts, output_prefix, source_prefixes, names)
  return path, list(parts)


def restore_converted(checkpoint: str, **modules: tf.Module) -> None:
  """Restores a checkpoint in our layout (written by the converter) into the parts.

  E.g. `restore_converted(path, backbone=backbone, decoder=decoder)`.
  """
  status = tf.train.Checkpoint(**modules).read(checkpoint)
  status.expect_partial().assert_existing_objects_matched()


def restore_backbone(backbone: tf_keras.Model, checkpoint: str) -> None:
  """Restores a checkpoint in our layout (written by the converter) into `backbone`."""
  restore_converted(checkpoint, backbone=backbone)

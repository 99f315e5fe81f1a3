"""Brings checkpoints written by TF Model Garden's `official.vision` into our models.

Our backbones and decoders keep the published checkpoints' object layout (see
`modeling/layers/graph_layout.py`), so converting is a matter of finding where each
part sits in the source checkpoint (a bare backbone or decoder, an `official.vision`
training checkpoint of RetinaNet, Mask R-CNN or a classifier), checking every
variable is there with the right shape, and writing a checkpoint in our layout:
`tf.train.Checkpoint(backbone=..., decoder=...)`, which our task models restore from.

A Mask R-CNN converts whole (`convert_model_checkpoint`): our MaskRCNNModel is
Model Garden's class around our backbone, so its RPN, detection and mask heads
keep their object layout too, and every part of the model's checkpoint items
(backbone, decoder, rpn_head, detection_head, mask_head) is found and checked the
same way. `spinenet-convert-checkpoint` is the command line of
`convert_architecture` (backbone and decoder by flags) and of
`convert_model_checkpoint` (every part of a gin config's model).
"""

import collections
import os
import tempfile
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple
import uuid

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2
import tf_keras

from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.utils import checkpoint_paths
from official_spinenet.utils import files

# Where `official.vision` puts each part: training checkpoints carry it both as a
# top-level item (`backbone/`, `decoder/`) and inside the model (`model/_backbone/`).
SOURCE_PREFIX_CANDIDATES = ('backbone', 'model/_backbone', 'model/backbone', 'model')
DECODER_SOURCE_PREFIX_CANDIDATES = ('decoder', 'model/_decoder', 'model/decoder')
# Model Garden's R-CNN heads: its MaskRCNNModel keeps them as attributes of these
# names (its trainer writes `model/rpn_head/...`); its `checkpoint_items` names
# them the same at the top level.
RCNN_HEADS = ('rpn_head', 'detection_head', 'mask_head')
PART_SOURCE_PREFIX_CANDIDATES = {
  'backbone': SOURCE_PREFIX_CANDIDATES,
  'decoder': DECODER_SOURCE_PREFIX_CANDIDATES,
  **{head: (head, f'model/{head}') for head in RCNN_HEADS},
}
# What to do when a part is not found (spinenet-convert-checkpoint's words).
_NOT_FOUND_HINTS = {
  'backbone': 'Pass --source_prefix to name where the backbone is.',
  'decoder': 'Pass --decoder_source_prefix to name where the decoder is.',
  **{
    head: f'A Model Garden Mask R-CNN checkpoint keeps it as model/{head}: is this '
    'one of another model (RetinaNet, a classifier, a bare backbone)?'
    for head in RCNN_HEADS
  },
}
_NOT_FOUND_HINTS['mask_head'] += ' A Faster R-CNN (no masks) needs MaskRCNNTask.mask_head = None.'
_ARCHITECTURE_FLAGS = {
  'backbone': '--model and --model_id (and min/max level)',
  'decoder': '--decoder and its --decoder_* flags (and min/max level)',
}
# The task settings that shape each part besides its own bindings.
_GIN_HINTS = {
  'backbone': ' (and the task\'s min/max level)',
  'rpn_head': ' (and the task\'s levels, num_scales and aspect_ratios)',
  'detection_head': ' (and the task\'s num_classes)',
  'mask_head': ' (and the task\'s num_classes)',
}
_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'


class CheckpointContents(NamedTuple):
  """What the checks read of a checkpoint: its object graph and {key: shape}."""

  graph: trackable_object_graph_pb2.TrackableObjectGraph
  shapes: Dict[str, Tuple[int, ...]]


def read_contents(path: str) -> CheckpointContents:
  """The object graph and variable shapes of the (object-based, TF2) checkpoint at path."""
  try:
    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
      reader.get_tensor(_GRAPH_KEY)
    )
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'Cannot read checkpoint {path} as a TF2 object-based one: {e}') from e
  shapes = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
  return CheckpointContents(graph, shapes)


def _children(contents: CheckpointContents, node_id: int) -> Dict[str, int]:
  return {child.local_name: child.node_id for child in contents.graph.nodes[node_id].children}


def _variable_keys(contents: CheckpointContents, prefix: str) -> Dict[str, Tuple[int, ...]]:
  """{path relative to the object at `prefix`: shape} for the variables it reaches.

  Paths are walked in the object graph (breadth first, the first path to a
  variable names it), not read off the checkpoint's keys: a checkpoint keys each
  variable by one path from its root, and Model Garden's MaskRCNNModel also
  tracks its heads in `_config_dict`, so its detection head's variables are keyed
  `model/_config_dict/detection_head/...`, not `model/detection_head/0/...`.
  """
  node_id = 0
  for name in prefix.strip('/').split('/'):
    node_id = _children(contents, node_id).get(name)
    if node_id is None:
      return {}
  keys, seen, queue = {}, {node_id}, collections.deque([(node_id, '')])
  while queue:
    node_id, path = queue.popleft()
    for attribute in contents.graph.nodes[node_id].attributes:
      keys[f'{path}.ATTRIBUTES/{attribute.name}'] = contents.shapes[attribute.checkpoint_key]
    for name, child in _children(contents, node_id).items():
      if child not in seen:
        seen.add(child)
        queue.append((child, f'{path}{name}/'))
  return keys


def expected_keys(module: tf.Module, part: str = 'backbone') -> Dict[str, Tuple[int, ...]]:
  """The variables' object paths and shapes of `module` in our layout (relative to it)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = tf.train.Checkpoint(**{part: module}).write(os.path.join(tmp, 'ckpt'))
    return _variable_keys(read_contents(path), part)


def _object_paths(contents: CheckpointContents, depth: int = 2) -> Sequence[str]:
  """The object paths of a checkpoint's first `depth` levels, e.g. ['model', 'model/backbone']."""
  paths, level = [], [('', 0)]
  for _ in range(depth):
    level = [
      (f'{path}{name}', child)
      for path, node_id in level
      for name, child in _children(contents, node_id).items()
    ]
    paths += [path for path, _ in level]
    level = [(f'{path}/', child) for path, child in level]
  return sorted(paths)


def find_source_prefix(
  contents: CheckpointContents,
  wanted: Dict[str, Tuple[int, ...]],
  candidates: Sequence[str] = SOURCE_PREFIX_CANDIDATES,
  part: str = 'backbone',
  source_name: str = 'the source checkpoint',
) -> str:
  """The object path under which the source holds the most wanted variables."""
  best, best_hits = None, 0
  for prefix in candidates:
    hits = len(set(_variable_keys(contents, prefix)) & set(wanted))
    if hits > best_hits:
      best, best_hits = prefix, hits
  if best is None:
    raise ValueError(
      f'Found no {part} variables in {source_name} under any of {list(candidates)}; '
      f'it holds the objects {_object_paths(contents)[:12]}. '
      + _NOT_FOUND_HINTS.get(part, f'Pass the object path of the {part} in the source.')
    )
  return best


def _short_key(key: str) -> str:
  """A variable's path without the suffix every variable has, for messages."""
  return key.replace('/.ATTRIBUTES/VARIABLE_VALUE', '')


def compare_keys(
  source: Dict[str, Tuple[int, ...]],
  wanted: Dict[str, Tuple[int, ...]],
  source_name: str,
  model_name: str,
  part: str = 'backbone',
  hint: Optional[str] = None,
) -> None:
  """Raises a ValueError that names missing, mis-shaped and unexpected variables.

  A source part with variables our part lacks (e.g. more head convs) is another
  architecture too: restoring would silently drop them.
  `hint` names the settings to check (default: the converter's flags for `part`).
  """
  missing = sorted(k for k in wanted if k not in source)
  mis_shaped = sorted(
    (k, source[k], wanted[k]) for k in wanted if k in source and source[k] != wanted[k]
  )
  unexpected = sorted(k for k in source if k not in wanted)
  if not missing and not mis_shaped and not unexpected:
    return
  lines = [f'Checkpoint {source_name} does not match {model_name}:']
  if missing:
    lines.append(
      f'  {len(missing)} of {len(wanted)} variables are missing, e.g. '
      + ', '.join(map(_short_key, missing[:8]))
    )
  if mis_shaped:
    lines.append(
      f'  {len(mis_shaped)} variables have the wrong shape, e.g. '
      + ', '.join(f'{_short_key(k)}: checkpoint {s} vs model {w}' for k, s, w in mis_shaped[:8])
    )
  if unexpected:
    lines.append(
      f'  {len(unexpected)} variables of the checkpoint are not in the model, e.g. '
      + ', '.join(map(_short_key, unexpected[:8]))
    )
  hint = hint or _ARCHITECTURE_FLAGS.get(part, 'the architecture')
  lines.append(f'  Check {hint} against the model that wrote the checkpoint.')
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
  hints: Optional[Mapping[str, str]] = None,
) -> str:
  """Converts the parts of a Model Garden checkpoint into our layout.

  Args:
    source: checkpoint prefix, `<prefix>.index`, or a folder holding checkpoints
      (latest is used).
    modules: our parts by checkpoint name (`PART_SOURCE_PREFIX_CANDIDATES`:
      'backbone', 'decoder', 'rpn_head', 'detection_head', 'mask_head'), built
      with the architecture of the source.
    output_prefix: where to write the converted checkpoint; it holds every part.
    source_prefixes: each part's object path in the source, e.g. {'decoder':
      'model/_decoder'}; a missing or None entry is found among the usual places
      (`PART_SOURCE_PREFIX_CANDIDATES`).
    model_names: how error messages name each part (e.g. {'backbone': 'SpineNet-49'}).
    hints: per part, the settings a mismatch message tells to check (default:
      the converter's architecture flags).

  Returns:
    The path prefix of the written checkpoint.

  Raises:
    ValueError: the source is missing, or does not hold this architecture; nothing
      is written then.
  """
  source = checkpoint_paths.resolve_checkpoint(source, flag='--source')
  contents = read_contents(source)
  source_prefixes = dict(source_prefixes or {})
  model_names = dict(model_names or {})
  hints = dict(hints or {})
  readers = []
  for part, module in modules.items():
    if part not in PART_SOURCE_PREFIX_CANDIDATES:
      raise ValueError(
        f'Unknown checkpoint part {part!r}; choose from {sorted(PART_SOURCE_PREFIX_CANDIDATES)}.'
      )
    wanted = expected_keys(module, part)
    prefix = source_prefixes.get(part) or find_source_prefix(
      contents, wanted, PART_SOURCE_PREFIX_CANDIDATES[part], part, f'checkpoint {source}'
    )
    compare_keys(
      _variable_keys(contents, prefix),
      wanted,
      f'{source} ({prefix}/)',
      model_names.get(part, f'the {part}'),
      part,
      hints.get(part),
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


def _class_name(module: tf.Module) -> str:
  """The class of a part; of its first element for a list (MaskRCNNModel's detection_head)."""
  if isinstance(module, (list, tuple)) and module:
    return _class_name(module[0])
  return type(module).__name__


def convert_model_checkpoint(
  source: str,
  checkpoint_items: Mapping[str, tf.Module],
  output_prefix: str,
  source_prefixes: Optional[Mapping[str, Optional[str]]] = None,
  config_name: str = 'the gin config',
) -> Tuple[str, Sequence[str]]:
  """Converts a Model Garden checkpoint of a whole model into our model's parts.

  For a Mask R-CNN: tf-models-official's MaskRCNNTask writes
  `Checkpoint(model=MaskRCNNModel)`; its backbone (their SpineNet, whose layout
  ours keeps), decoder and RPN, detection and mask heads (the same Model Garden
  classes as in our model) are each found, checked variable by variable, and
  written under our checkpoint item names, which our loader
  (`workflows.loading.restore_weights`) and the trainer's init_checkpoint
  (`init_checkpoint_modules=['all']`) restore.

  Args:
    source: checkpoint prefix, `<prefix>.index`, or a folder (its latest).
    checkpoint_items: our task's `checkpoint_items(model)` ('model' is skipped),
      with the architecture of the source.
    output_prefix: where to write the converted checkpoint.
    source_prefixes: each part's object path in the source (missing or None:
      found).
    config_name: how messages name the configuration the model was built from.

  Returns:
    (the written checkpoint prefix, the names of the parts it holds).

  Raises:
    ValueError: the source is missing, lacks a part (not a checkpoint of this
      kind of model), or holds a part with other sizes; nothing is written then.
  """
  parts = {name: module for name, module in checkpoint_items.items() if name != 'model'}
  names, hints = {}, {}
  for part, module in parts.items():
    names[part] = f'the {part} ({_class_name(module)}) of {config_name}'
    hints[part] = f"{config_name}'s {_class_name(module)} bindings" + _GIN_HINTS.get(part, '')
  path = convert_checkpoint(source, parts, output_prefix, source_prefixes, names, hints)
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

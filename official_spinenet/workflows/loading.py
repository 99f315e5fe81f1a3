"""A trained model from its gin config and a checkpoint (what export, predict, TFLite load).

  task = loading.build_task(['demo/retinanet_spinenet_shapes.gin'])
  loaded = loading.load_model(gin_files, gin_params, '/tmp/spinenet_demo/model')
  loaded.model, loaded.task.nms_settings, loaded.operative_config

The model is built from the gin files and bindings exactly as spinenet-train builds
it, and its weights are read from a training checkpoint (the whole model) or a
converted one (backbone, decoder, head); optimizer state is ignored.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from official_spinenet import configurables
from official_spinenet.serving import export_lib
from official_spinenet.utils import checkpoint_paths

# How many characters of a checkpoint library error go into our message.
_MAX_DETAIL = 600


@dataclasses.dataclass
class LoadedModel:
  """A task's model with checkpoint weights.

  Attributes:
    task: the task the gin config built (RetinaNetTask, MaskRCNNTask,
      ClassificationTask, ...: image_size, num_classes, ...).
    model: the built model (RetinaNetModel, MaskRCNNModel, ClassificationModel)
      holding the checkpoint's weights.
    checkpoint_path: the checkpoint prefix that was read (e.g. '.../ckpt-1500').
    operative_config: gin's operative config after the model was built, with a header
      naming the checkpoint, gin files and bindings.
  """

  task: Any
  model: Any
  checkpoint_path: str
  operative_config: str


def _short(error: BaseException) -> str:
  text = str(error).strip()
  return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + ' ...'


def restore_weights(checkpoint_path: str, items: Mapping[str, tf.Module]) -> str:
  """Reads model weights (no optimizer state) from a training or converted checkpoint.

  Training checkpoints hold the whole model under 'model' (see training/trainer.py; a
  classifier's as a detector's); spinenet-convert-checkpoint writes only named parts
  ('backbone', 'decoder', 'head'). The first that fits every variable of the model wins.

  Args:
    checkpoint_path: a checkpoint prefix.
    items: the task's checkpoint items ({'model': model, 'backbone': ..., 'head': ...}).

  Returns:
    'model' or 'parts': how the weights were found.

  Raises:
    ValueError: the checkpoint does not hold this model's variables, or holds them
      with other shapes (another architecture, width or number of classes).
  """
  model = items['model']
  try:
    reader = tf.train.load_checkpoint(checkpoint_path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
      reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH')
    )
  except (ValueError, tf.errors.OpError) as e:
    raise ValueError(f'Cannot read checkpoint {checkpoint_path!r}: {_short(e)}') from e
  in_checkpoint = {child.local_name for child in graph.nodes[0].children}
  parts = {k: v for k, v in items.items() if k != 'model'}
  if 'model' in in_checkpoint:
    parts, found = {'model': model}, 'model'
  elif set(parts) <= in_checkpoint:
    found = 'parts'
  else:
    raise ValueError(
      f'Checkpoint {checkpoint_path!r} holds {sorted(in_checkpoint)}: neither a whole '
      f"'model' (spinenet-train) nor all of {sorted(parts)} (spinenet-convert-checkpoint)."
    )
  try:
    status = tf.train.Checkpoint(**parts).read(checkpoint_path).expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
      f'Checkpoint {checkpoint_path!r} does not fit the model built from the gin config '
      f'(another backbone, width, head or number of classes?): {_short(e)}'
    ) from e
  return found


def build_task(gin_files: Sequence[str], gin_params: Sequence[str] = ()):
  """Parses gin (unknown bindings fail) and returns the configured task.

  Raises:
    ValueError: no gin file, a bad binding, or an input size the task rejects.
  """
  if not gin_files:
    raise ValueError('Give at least one --gin_file (the config the model was trained with).')
  configurables.parse_gin(gin_files, gin_params)
  task = configurables.build_experiment()['task']
  # Modes other than train / eval check only the model settings (input size a
  # multiple of 2^max_level, levels, classes), not the data files.
  task.validate('export')
  return task


def task_nms_options(
  task,
  score_threshold: Optional[float] = None,
  max_detections: Optional[int] = None,
  nms_iou_threshold: Optional[float] = None,
  pre_nms_top_k: Optional[int] = None,
) -> Dict[str, Any]:
  """The NMS options, each None replaced by the task's evaluation setting.

  A task without `nms_settings` (MaskRCNNTask: its NMS is the model's gin-bound
  DetectionGenerator) leaves them None, which export_lib.make_export_config reads
  from the built model.

  Returns:
    {'score_threshold', 'max_detections', 'nms_iou_threshold', 'pre_nms_top_k'}
    (the names export_lib and tflite_export take).
  """
  nms = getattr(task, 'nms_settings', {})
  given = {
    'score_threshold': score_threshold,
    'max_detections': max_detections,
    'nms_iou_threshold': nms_iou_threshold,
    'pre_nms_top_k': pre_nms_top_k,
  }
  return {
    name: nms.get(export_lib.NMS_PARAMETERS[name]) if value is None else value
    for name, value in given.items()
  }


def _operative_config(
  checkpoint_path: str, gin_files: Sequence[str], gin_params: Sequence[str]
) -> str:
  header = [f'# Exported from checkpoint {checkpoint_path}', f'# gin files: {", ".join(gin_files)}']
  header += [f'# gin param: {p}' for p in gin_params]
  return '\n'.join(header) + '\n\n' + configurables.operative_config_str()


def build_and_restore(
  task, checkpoint_path: str, gin_files: Sequence[str], gin_params: Sequence[str]
) -> LoadedModel:
  """Builds the task's model (gin already parsed) and reads checkpoint_path into it."""
  model = task.build_model()
  found = restore_weights(checkpoint_path, task.checkpoint_items(model))
  logging.info('Restored the model from %s (%s).', checkpoint_path, found)
  return LoadedModel(
    task, model, checkpoint_path, _operative_config(checkpoint_path, gin_files, gin_params)
  )


def load_model(gin_files: Sequence[str], gin_params: Sequence[str], checkpoint: str) -> LoadedModel:
  """Builds the gin config's model and restores the checkpoint's weights into it.

  Args:
    gin_files: gin files, as for spinenet-train (relative to gin_configs/ allowed).
    gin_params: gin bindings applied after the files.
    checkpoint: a checkpoint prefix or a model dir (newest checkpoint).

  Returns:
    The LoadedModel.

  Raises:
    ValueError: bad gin config, missing checkpoint, or a checkpoint that does not
      fit the model.
  """
  task = build_task(gin_files, gin_params)
  return build_and_restore(
    task, checkpoint_paths.resolve_checkpoint(checkpoint), gin_files, gin_params
  )

r"""spinenet-export: gin config + checkpoint -> SavedModel for TF Serving.

  spinenet-export \
    --gin_file=gin_configs/demo/retinanet_spinenet_shapes.gin \
    --checkpoint=/tmp/spinenet_demo/model \
    --export_dir=/models/shapes/1 \
    --score_threshold=0.05 --max_detections=100 \
    --category_names_json=/tmp/spinenet_demo/data/annotations/instances_val.json

The model is built from the gin files and bindings exactly as spinenet-train builds
it, its weights are read from --checkpoint (a checkpoint prefix such as
`model_dir/ckpt-1500`, or a model dir, whose newest checkpoint is taken), and
`serving.export_lib.export_saved_model` writes the SavedModel (signatures
`image_bytes` = `serving_default`, `image_tensor`, `tf_example`; pre- and
post-processing inside). The operative gin config goes to
`<export_dir>/assets.extra/operative_config.gin`.

Everything cheap is checked before the model is built: flags, gin bindings (an
unknown name or parameter fails), the checkpoint's existence, the export options,
the target folder and the category names file. The NMS options default to the
task's evaluation settings (RetinaNetTask.pre_nms_score_threshold, ...); whatever
is used is recorded in `assets.extra/export_config.json`.

`load_model` and `export_from_checkpoint` are the library functions behind the
binary (spinenet-predict and tools/export_tflite.py use `load_model`).
"""

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from absl import app
from absl import flags
from absl import logging
import gin
import tensorflow as tf

from tensorflow.core.protobuf import trackable_object_graph_pb2

from official_spinenet import configurables
from official_spinenet.serving import client_lib
from official_spinenet.serving import export_lib
from official_spinenet.serving import preprocessing
from official_spinenet.tasks import anytime_retinanet_task

FLAGS = flags.FLAGS
OPERATIVE_CONFIG_FILE = 'operative_config.gin'
# How many characters of a checkpoint library error go into our message.
_MAX_DETAIL = 600


@dataclasses.dataclass
class LoadedModel:
  """A task's model with checkpoint weights.

  Attributes:
    task: the RetinaNetTask the gin config built (image_size, nms_settings, ...).
    model: the built RetinaNetModel holding the checkpoint's weights.
    checkpoint_path: the checkpoint prefix that was read (e.g. '.../ckpt-1500').
    operative_config: gin's operative config after the model was built, with a header
      naming the checkpoint, gin files and bindings.
  """
  task: Any
  model: Any
  checkpoint_path: str
  operative_config: str


def resolve_checkpoint(path: str) -> str:
  """The checkpoint prefix for a prefix, a `<prefix>.index` file, or a model dir.

  Raises:
    ValueError: nothing is given, the folder holds no checkpoint, or no
      `<prefix>.index` exists (the message names the path).
  """
  if not path:
    raise ValueError('No checkpoint given: pass --checkpoint (a checkpoint prefix such '
                     'as model_dir/ckpt-1500, or a model dir).')
  if path.endswith('.index'):
    path = path[:-len('.index')]
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(f'--checkpoint: no checkpoint in directory {path!r} (no '
                       '"checkpoint" file naming a ckpt-N). Train first, or pass a prefix.')
    path = latest
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'--checkpoint: no checkpoint at {path!r} (no {path}.index).')
  return path


def _short(error: BaseException) -> str:
  text = str(error).strip()
  return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + ' ...'


def restore_weights(checkpoint_path: str, items: Mapping[str, tf.Module]) -> str:
  """Reads model weights (no optimizer state) from a training or converted checkpoint.

  Training checkpoints hold the whole model under 'model' (see training/trainer.py);
  tools/convert_checkpoint.py writes only named parts ('backbone', 'decoder', 'head').
  The first that fits every variable of the model wins.

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
        reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
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
        f"'model' (spinenet-train) nor all of {sorted(parts)} (tools/convert_checkpoint.py).")
  try:
    status = tf.train.Checkpoint(**parts).read(checkpoint_path).expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(
        f'Checkpoint {checkpoint_path!r} does not fit the model built from the gin config '
        f'(another backbone, width, head or number of classes?): {_short(e)}') from e
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


def _operative_config(checkpoint_path: str, gin_files: Sequence[str],
                      gin_params: Sequence[str]) -> str:
  header = [f'# Exported from checkpoint {checkpoint_path}',
            f'# gin files: {", ".join(gin_files)}']
  header += [f'# gin param: {p}' for p in gin_params]
  return '\n'.join(header) + '\n\n' + gin.operative_config_str()


def load_model(gin_files: Sequence[str], gin_params: Sequence[str],
               checkpoint: str) -> LoadedModel:
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
  return build_and_restore(task, resolve_checkpoint(checkpoint), gin_files, gin_params)


def build_and_restore(task, checkpoint_path: str, gin_files: Sequence[str],
                      gin_params: Sequence[str]) -> LoadedModel:
  """Builds the task's model (gin already parsed) and reads checkpoint_path into it."""
  model = task.build_model()
  found = restore_weights(checkpoint_path, task.checkpoint_items(model))
  logging.info('Restored the model from %s (%s).', checkpoint_path, found)
  return LoadedModel(task, model, checkpoint_path,
                     _operative_config(checkpoint_path, gin_files, gin_params))


def load_category_names(source: Union[None, str, Mapping[int, str], Sequence[str]]
                        ) -> Optional[Dict[int, str]]:
  """Class id -> name from a file (see client_lib.load_category_names), a mapping or a list.

  A list names ids 1, 2, ... (0 is the background). None stays None.
  """
  if source is None or source == '':
    return None
  if isinstance(source, str):
    names = client_lib.load_category_names(source)
    if not names:
      raise ValueError(f'Category names file {source!r} names no categories.')
    return names
  if isinstance(source, Mapping):
    return {int(k): str(v) for k, v in source.items()}
  return {i + 1: str(name) for i, name in enumerate(source)}


def _check_export_dir(export_dir: str, overwrite: bool) -> None:
  if not export_dir:
    raise ValueError('No export folder given: pass --export_dir (e.g. /models/name/1).')
  if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
    raise FileExistsError(f'--export_dir {export_dir} is not empty; pass --overwrite to '
                          'replace it.')
  if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise FileExistsError(f'--export_dir {export_dir} exists and is not a directory.')


def export_from_checkpoint(gin_files: Sequence[str],
                           gin_params: Sequence[str],
                           checkpoint: str,
                           export_dir: str,
                           *,
                           score_threshold: Optional[float] = None,
                           max_detections: Optional[int] = None,
                           nms_iou_threshold: Optional[float] = None,
                           pre_nms_top_k: Optional[int] = None,
                           apply_nms: bool = True,
                           batch_size: Optional[int] = None,
                           max_image_pixels: int = preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
                           category_names=None,
                           overwrite: bool = False,
                           exit_index: Optional[int] = None) -> str:
  """gin + checkpoint -> SavedModel (what spinenet-export runs).

  Args:
    gin_files, gin_params, checkpoint: see load_model.
    export_dir: the SavedModel folder (for TF Serving a version folder, .../name/1).
    score_threshold, max_detections, nms_iou_threshold, pre_nms_top_k: NMS options;
      None takes the task's evaluation setting.
    apply_nms: False exports decoded boxes and scores of every anchor instead.
    batch_size: None for a dynamic batch.
    max_image_pixels: larger images are refused at serving time.
    category_names: a JSON file (client_lib.load_category_names formats, or a COCO
      annotation file), a {id: name} mapping, a list of names of ids 1, 2, ..., or None.
    overwrite: replace a non-empty export_dir.
    exit_index: for an anytime NAS-FPN model (AnytimeRetinaNetTask), the exit the
      export detects with (1-based, negative from the end); only the NAS-FPN repeats
      up to it are in the exported graph. None: the task's eval_exit.

  Returns:
    The absolute export_dir.

  Raises:
    ValueError: bad gin config, options, category names or checkpoint.
    FileExistsError: export_dir is not empty and overwrite is False.
  """
  task = build_task(gin_files, gin_params)
  checkpoint_path = resolve_checkpoint(checkpoint)
  nms = task.nms_settings
  options = dict(
      score_threshold=nms['pre_nms_score_threshold'] if score_threshold is None
      else score_threshold,
      max_detections=nms['max_num_detections'] if max_detections is None else max_detections,
      nms_iou_threshold=nms['nms_iou_threshold'] if nms_iou_threshold is None
      else nms_iou_threshold,
      pre_nms_top_k=nms['pre_nms_top_k'] if pre_nms_top_k is None else pre_nms_top_k,
      apply_nms=apply_nms, max_image_pixels=max_image_pixels, batch_size=batch_size)
  export_lib.ExportConfig(input_image_size=tuple(task.image_size), **options).validate()
  _check_export_dir(export_dir, overwrite)
  names = load_category_names(category_names)
  if names is not None:
    known = set(range(1, task.num_classes))
    unknown = sorted(set(names) - known)
    if unknown:
      raise ValueError(f'Category names for class ids {unknown[:10]} that the model does not '
                       f'predict (it has ids 1..{task.num_classes - 1}).')

  if exit_index is not None:
    if not isinstance(task, anytime_retinanet_task.AnytimeRetinaNetTask):
      raise ValueError(f'--exit_index={exit_index} needs an anytime NAS-FPN model '
                       f'(AnytimeRetinaNetTask); the gin config builds a {type(task).__name__}.')
    if isinstance(exit_index, bool) or not isinstance(exit_index, int) or exit_index == 0:
      raise ValueError(f'--exit_index must be a non-zero int (1-based, negative from the end), '
                       f'got {exit_index!r}.')

  loaded = build_and_restore(task, checkpoint_path, gin_files, gin_params)
  if exit_index is not None:
    # Inference then runs the repeats up to this exit only (checked against the model).
    loaded.model.default_exit_index = exit_index
    loaded.operative_config = f'# exit_index: {exit_index}\n' + loaded.operative_config
  return export_lib.export_saved_model(
      loaded.model, export_dir, tuple(task.image_size), **options,
      extra_assets={OPERATIVE_CONFIG_FILE: loaded.operative_config},
      category_names=names, overwrite=overwrite)


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags (at run time, so importing this module registers none).

  Tests pass their own FlagValues, so these names never meet other binaries' flags.
  """
  fv = dict(flag_values=flag_values)
  flags.DEFINE_multi_string('gin_file', [], 'Gin files the model was trained with, applied '
                            'in order (paths may be relative to gin_configs/).', **fv)
  flags.DEFINE_multi_string('gin_param', [], 'Gin bindings applied after the files.', **fv)
  flags.DEFINE_string('checkpoint', None, 'A checkpoint prefix (model_dir/ckpt-N) or a model '
                      'dir (its newest checkpoint).', **fv)
  flags.DEFINE_string('export_dir', None, 'SavedModel folder to write; for TF Serving a '
                      'version folder such as /models/spinenet/1.', **fv)
  flags.DEFINE_float('score_threshold', None, 'Drop detections scoring below this '
                     '(default: RetinaNetTask.pre_nms_score_threshold).', **fv)
  flags.DEFINE_integer('max_detections', None, 'Detections per image (default: '
                       'RetinaNetTask.max_num_detections).', **fv)
  flags.DEFINE_float('nms_iou_threshold', None, 'NMS IoU threshold (default: '
                     'RetinaNetTask.nms_iou_threshold).', **fv)
  flags.DEFINE_integer('pre_nms_top_k', None, 'Candidates per class before NMS (default: '
                       'RetinaNetTask.pre_nms_top_k).', **fv)
  flags.DEFINE_boolean('apply_nms', True, 'False: export decoded boxes and scores of every '
                       'anchor instead of detections.', **fv)
  flags.DEFINE_integer('batch_size', None, 'Fixed batch size (default: dynamic).', **fv)
  flags.DEFINE_integer('max_image_pixels', preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
                       'Refuse larger images (height * width) at serving time.', **fv)
  flags.DEFINE_boolean('overwrite', False, 'Replace a non-empty --export_dir.', **fv)
  flags.DEFINE_integer('exit_index', None, 'Anytime NAS-FPN models: the exit to export '
                       '(1-based, negative from the end; default: the task\'s eval_exit).', **fv)
  flags.DEFINE_string('category_names_json', None, 'Class names recorded in the export: a '
                      'COCO annotation file, a JSON {"id": "name"} or ["name of id 1", ...], '
                      "or another export's assets.extra/export_config.json.", **fv)
  flags.mark_flags_as_required(['checkpoint', 'export_dir'], flag_values=flag_values)


def run(argv) -> None:
  """The absl entry point: flags -> export_from_checkpoint()."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected positional arguments: {argv[1:]}')
  if not FLAGS.gin_file:
    raise app.UsageError('Give at least one --gin_file (the config the model was trained '
                         'with).')
  try:
    export_dir = export_from_checkpoint(
        FLAGS.gin_file, FLAGS.gin_param, FLAGS.checkpoint, FLAGS.export_dir,
        score_threshold=FLAGS.score_threshold, max_detections=FLAGS.max_detections,
        nms_iou_threshold=FLAGS.nms_iou_threshold, pre_nms_top_k=FLAGS.pre_nms_top_k,
        apply_nms=FLAGS.apply_nms, batch_size=FLAGS.batch_size,
        max_image_pixels=FLAGS.max_image_pixels, category_names=FLAGS.category_names_json,
        overwrite=FLAGS.overwrite, exit_index=FLAGS.exit_index)
  except (ValueError, FileExistsError) as e:
    raise app.UsageError(str(e)) from e
  print(f'Exported a SavedModel to {export_dir}')


def main():
  """Console-script entry point (`spinenet-export`)."""
  define_flags()
  app.run(run)


if __name__ == '__main__':
  main()

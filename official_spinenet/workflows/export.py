"""gin config + checkpoint -> SavedModel for TF Serving (what spinenet-export runs).

The model is built from the gin files and bindings exactly as spinenet-train builds
it, its weights are read from the checkpoint (a prefix such as `model_dir/ckpt-1500`,
or a model dir, whose newest checkpoint is taken), and
`serving.export_lib.export_saved_model` writes the SavedModel (signatures
`image_bytes` = `serving_default`, `image_tensor`, `tf_example`; pre- and
post-processing inside). The operative gin config goes to
`<export_dir>/assets.extra/operative_config.gin`.

Everything cheap is checked before the model is built: gin bindings (an unknown name
or parameter fails), the checkpoint's existence, the export options, the target
folder and the category names. The NMS options default to the task's evaluation
settings (RetinaNetTask.pre_nms_score_threshold, ...; a Mask R-CNN config's
DetectionGenerator bindings); whatever is used is recorded in
`assets.extra/export_config.json`. A Mask R-CNN export adds detection_masks: crop masks
by default, or masks pasted into the image's pixels (mask_output='pasted'; see
serving/export_lib.py and docs/serving.md).

A ClassificationTask config exports a classifier instead
(`serving.classification_export`: the same signatures, returning the top_k classes,
softmax scores and class names of each image; the names from
ClassificationTask.class_names_file). The detection options (NMS, apply_nms, exit_index,
mask_output, category names) are refused for it; top_k is refused for a detector.
"""

from typing import Any, Dict, Optional, Sequence

from official_spinenet.serving import classification_export
from official_spinenet.serving import client_lib
from official_spinenet.serving import export_lib
from official_spinenet.serving import preprocessing
from official_spinenet.tasks import anytime_retinanet_task
from official_spinenet.tasks import classification_task
from official_spinenet.tasks import maskrcnn_task
from official_spinenet.utils import checkpoint_paths
from official_spinenet.workflows import loading

OPERATIVE_CONFIG_FILE = 'operative_config.gin'
# export_from_checkpoint's detection-only arguments -> the spinenet-export flag that sets them.
_DETECTION_FLAGS = {
  'score_threshold': '--score_threshold',
  'max_detections': '--max_detections',
  'nms_iou_threshold': '--nms_iou_threshold',
  'pre_nms_top_k': '--pre_nms_top_k',
  'apply_nms': '--noapply_nms',
  'exit_index': '--exit_index',
  'mask_output': '--mask_output',
  'category_names': '--category_names_json',
}


def _check_category_ids(names: Dict[int, str], num_classes: int) -> None:
  unknown = sorted(set(names) - set(range(1, num_classes)))
  if unknown:
    raise ValueError(
      f'Category names for class ids {unknown[:10]} that the model does not '
      f'predict (it has ids 1..{num_classes - 1}).'
    )


def _check_exit_index(task, exit_index: Optional[int]) -> None:
  if exit_index is None:
    return
  if not isinstance(task, anytime_retinanet_task.AnytimeRetinaNetTask):
    raise ValueError(
      f'--exit_index={exit_index} needs an anytime NAS-FPN model '
      f'(AnytimeRetinaNetTask); the gin config builds a {type(task).__name__}.'
    )
  if isinstance(exit_index, bool) or not isinstance(exit_index, int) or exit_index == 0:
    raise ValueError(
      f'--exit_index must be a non-zero int (1-based, negative from the end), got {exit_index!r}.'
    )


def _check_mask_options(task, mask_output: str, apply_nms: bool) -> bool:
  """Whether the model has masks; ValueError for options it cannot export with."""
  is_maskrcnn = isinstance(task, maskrcnn_task.MaskRCNNTask)
  has_masks = is_maskrcnn and task.include_mask
  if mask_output != export_lib.DEFAULT_MASK_OUTPUT and not has_masks:
    raise ValueError(
      f'--mask_output={mask_output} needs a model with masks; the gin config builds a '
      f'{type(task).__name__} without a mask head.'
    )
  if not apply_nms and is_maskrcnn:
    raise ValueError(
      f'--noapply_nms exports every anchor of a RetinaNet; a {type(task).__name__} '
      'detects with NMS inside the model.'
    )
  return has_masks


def _check_export_dir(export_dir: str, overwrite: bool) -> None:
  if not export_dir:
    raise ValueError('No export folder given: pass --export_dir (e.g. /models/name/1).')
  export_lib.check_export_dir(export_dir, overwrite, how_to_overwrite='--overwrite')


def _check_classifier_options(task, detection_options: Dict[str, Any]) -> None:
  """ValueError naming the detection-only options (_DETECTION_FLAGS) given for a classifier."""
  defaults = {'apply_nms': True, 'mask_output': export_lib.DEFAULT_MASK_OUTPUT}
  given = [
    _DETECTION_FLAGS[name]
    for name, value in detection_options.items()
    if value is not None and value != defaults.get(name)
  ]
  if given:
    raise ValueError(
      f'{", ".join(given)}: detection options, but the gin config builds a '
      f'{type(task).__name__} (a classifier). It exports with --top_k, --batch_size and '
      '--max_image_pixels; its class names come from ClassificationTask.class_names_file.'
    )


def _export_classifier(
  task, gin_files, gin_params, checkpoint_path: str, export_dir: str, overwrite: bool, **options
) -> str:
  """A ClassificationTask's checkpoint -> classifier SavedModel (cheap checks first)."""
  if options['top_k'] is None:
    options['top_k'] = task.top_k
  classification_export.ClassificationExportConfig(
    input_image_size=tuple(task.image_size), **options
  ).validate(task.num_classes)
  _check_export_dir(export_dir, overwrite)
  names = classification_export.check_class_names(
    task.class_names(), task.num_classes, task.class_names_file
  )
  loaded = loading.build_and_restore(task, checkpoint_path, gin_files, gin_params)
  return classification_export.export_classifier(
    loaded.model,
    export_dir,
    task.image_size,
    class_names=names,
    extra_assets={OPERATIVE_CONFIG_FILE: loaded.operative_config},
    overwrite=overwrite,
    **options,
  )


def export_from_checkpoint(
  gin_files: Sequence[str],
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
  category_names: client_lib.CategoryNamesSource = None,
  overwrite: bool = False,
  exit_index: Optional[int] = None,
  mask_output: str = export_lib.DEFAULT_MASK_OUTPUT,
  top_k: Optional[int] = None,
) -> str:
  """gin + checkpoint -> SavedModel (a detector's, or a ClassificationTask's classifier).

  Args:
    gin_files, gin_params, checkpoint: see loading.load_model.
    export_dir: the SavedModel folder (for TF Serving a version folder, .../name/1).
    score_threshold, max_detections, nms_iou_threshold, pre_nms_top_k: NMS options;
      None takes the task's evaluation setting (Mask R-CNN: its DetectionGenerator's).
    apply_nms: False exports decoded boxes and scores of every anchor instead
      (RetinaNet only).
    batch_size: None for a dynamic batch.
    max_image_pixels: larger images are refused at serving time.
    category_names: see client_lib.load_category_names (a JSON file, a mapping, a
      list of the names of ids 1, 2, ..., or None).
    overwrite: replace a non-empty export_dir.
    exit_index: for an anytime NAS-FPN model (AnytimeRetinaNetTask), the exit the
      export detects with (1-based, negative from the end); only the NAS-FPN repeats
      up to it are in the exported graph. None: the task's eval_exit.
    mask_output: Mask R-CNN: 'crop' (default: float32 [B, N, 28, 28] over each box)
      or 'pasted' (uint8 [B, N, H, W] in the image's pixels).
    top_k: classifiers only: classes returned per image (None: the task's top_k).

  Returns:
    The absolute export_dir.

  Raises:
    ValueError: bad gin config, options, category names or checkpoint.
    FileExistsError: export_dir is not empty and overwrite is False.
  """
  task = loading.build_task(gin_files, gin_params)
  checkpoint_path = checkpoint_paths.resolve_checkpoint(checkpoint)
  if isinstance(task, classification_task.ClassificationTask):
    detection = {k: v for k, v in locals().items() if k in _DETECTION_FLAGS}
    _check_classifier_options(task, detection)
    return _export_classifier(
      task, gin_files, gin_params, checkpoint_path, export_dir, overwrite,
      top_k=top_k, batch_size=batch_size, max_image_pixels=max_image_pixels,
    )  # fmt: skip
  if top_k is not None:
    raise ValueError(
      f'--top_k={top_k} is for classifiers; the gin config builds a {type(task).__name__}.'
    )
  options = dict(
    **loading.task_nms_options(
      task, score_threshold, max_detections, nms_iou_threshold, pre_nms_top_k
    ),
    apply_nms=apply_nms,
    max_image_pixels=max_image_pixels,
    batch_size=batch_size,
  )
  if _check_mask_options(task, mask_output, apply_nms):
    options['mask_output'] = mask_output
  # None: the model's own NMS setting (Mask R-CNN), known once the model is built.
  given = {k: v for k, v in options.items() if v is not None or k == 'batch_size'}
  export_lib.ExportConfig(input_image_size=tuple(task.image_size), **given).validate()
  _check_export_dir(export_dir, overwrite)
  names = client_lib.load_category_names(category_names)
  _check_category_ids(names, task.num_classes)
  _check_exit_index(task, exit_index)

  loaded = loading.build_and_restore(task, checkpoint_path, gin_files, gin_params)
  if exit_index is not None:
    # Inference then runs the repeats up to this exit only (checked against the model).
    loaded.model.default_exit_index = exit_index
    loaded.operative_config = f'# exit_index: {exit_index}\n' + loaded.operative_config
  return export_lib.export_saved_model(
    loaded.model,
    export_dir,
    tuple(task.image_size),
    **options,
    extra_assets={OPERATIVE_CONFIG_FILE: loaded.operative_config},
    category_names=names or None,
    overwrite=overwrite,
  )

"""gin config + checkpoint -> TFLite detector, float or int8 (what spinenet-export-tflite runs).

The model ends in TFLite's TFLite_Detection_PostProcess op, so an app gets boxes,
scores and class ids, not anchors. Input: uint8 [1, H, W, 3], the image resized
keeping its aspect ratio and padded with the mean pixel (see serving/tflite_export.py,
and the <output>.json written beside the model). NMS options default to the gin
config's evaluation settings.
"""

import os
from typing import Optional, Sequence

from official_spinenet.data import retinanet_input
from official_spinenet.serving import client_lib
from official_spinenet.serving import tflite_export
from official_spinenet.tasks import retinanet_task
from official_spinenet.utils import checkpoint_paths
from official_spinenet.workflows import loading


def _check_representative_data(
  task, quantization: str, representative_data: Optional[str]
) -> Optional[str]:
  """The calibration TFRecord pattern (int8: default the training files), checked."""
  if quantization != 'int8':
    if representative_data:
      raise ValueError('--representative_data is for --quantization=int8 only.')
    return None
  representative_data = representative_data or task.train_data.file_pattern
  if not representative_data:
    raise ValueError(
      '--quantization=int8 needs --representative_data (a TFRecord pattern) '
      'or TRAIN_FILE_PATTERN in the gin config.'
    )
  retinanet_input.list_files(representative_data)  # ValueError when nothing matches
  return representative_data


def export_tflite_from_checkpoint(
  gin_files: Sequence[str],
  gin_params: Sequence[str],
  checkpoint: str,
  output: str,
  *,
  quantization: str = 'float',
  representative_data: Optional[str] = None,
  score_threshold: Optional[float] = None,
  max_detections: Optional[int] = None,
  nms_iou_threshold: Optional[float] = None,
  use_regular_nms: bool = True,
  normalized_coordinates: bool = False,
  num_calibration_images: int = 100,
  category_names: client_lib.CategoryNamesSource = None,
  overwrite: bool = False,
) -> str:
  """gin + checkpoint -> .tflite (+ .json); returns the .tflite path.

  Cheap checks (gin, checkpoint path, options, output, data pattern, category names)
  run before the model is built. See tflite_export.TFLiteConfig for the options;
  representative_data (int8) defaults to the gin config's training files.

  Raises:
    ValueError, FileExistsError: naming the problem.
  """
  task = loading.build_task(gin_files, gin_params)
  if not isinstance(task, retinanet_task.RetinaNetTask):
    raise ValueError(
      f'TFLite export supports RetinaNet configs only; the gin config builds a '
      f'{type(task).__name__} (export it as a SavedModel with spinenet-export).'
    )
  checkpoint_path = checkpoint_paths.resolve_checkpoint(checkpoint)
  nms = loading.task_nms_options(task, score_threshold, max_detections, nms_iou_threshold)
  del nms['pre_nms_top_k']  # the TFLite op keeps detections_per_class instead
  config = tflite_export.TFLiteConfig(
    input_image_size=tuple(task.image_size),
    quantization=quantization,
    **nms,
    use_regular_nms=use_regular_nms,
    normalized_coordinates=normalized_coordinates,
    num_calibration_images=num_calibration_images,
  )
  config.validate()
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f'--output {output} exists; pass --overwrite to replace it.')
  representative_data = _check_representative_data(task, quantization, representative_data)
  names = client_lib.load_category_names(category_names)
  loaded = loading.build_and_restore(task, checkpoint_path, gin_files, gin_params)
  return tflite_export.export_tflite(
    loaded.model,
    output,
    config,
    representative_data=representative_data,
    category_names=names,
    overwrite=overwrite,
  )

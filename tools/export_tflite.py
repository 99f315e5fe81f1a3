r"""Exports a RetinaNet (SpineNet-Mobile) from gin + checkpoint to TFLite, float or int8.

  python tools/export_tflite.py \
      --gin_file=retinanet/spinenet_mobile49_384.gin \
      --checkpoint=/ckpts/retinanet_mobile49 --output=/tmp/spinenet_mobile49.tflite

  # int8 post-training quantization, calibrated on 100 images of the TFRecords:
  python tools/export_tflite.py --gin_file=retinanet/spinenet_mobile49_384.gin \
      --checkpoint=/ckpts/retinanet_mobile49 --output=/tmp/spinenet_mobile49_int8.tflite \
      --quantization=int8 --representative_data='/data/coco/val-*'

The model ends in TFLite's TFLite_Detection_PostProcess op, so the app gets boxes,
scores and class ids, not anchors. Input: uint8 [1, H, W, 3], the image resized
keeping its aspect ratio and padded with the mean pixel (see
official_spinenet/serving/tflite_export.py, and <output>.json written beside the
model). NMS options default to the gin config's evaluation settings.
"""

import os
import sys

from absl import app
from absl import flags

try:
  import official_spinenet  # pylint: disable=unused-import
except ImportError:  # Run from a source checkout without installing.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from official_spinenet import export
from official_spinenet.serving import tflite_export

FLAGS = flags.FLAGS


def export_tflite_from_checkpoint(gin_files, gin_params, checkpoint, output, *,
                                  quantization='float', representative_data=None,
                                  score_threshold=None, max_detections=None,
                                  nms_iou_threshold=None, use_regular_nms=True,
                                  normalized_coordinates=False, num_calibration_images=100,
                                  category_names=None, overwrite=False) -> str:
  """gin + checkpoint -> .tflite (+ .json); returns the .tflite path.

  Cheap checks (gin, checkpoint path, options, output, data pattern) run before the
  model is built. representative_data defaults to the gin config's training files.

  Raises:
    ValueError, FileExistsError: naming the problem.
  """
  task = export.build_task(gin_files, gin_params)
  checkpoint_path = export.resolve_checkpoint(checkpoint)
  nms = task.nms_settings
  config = tflite_export.TFLiteConfig(
      input_image_size=tuple(task.image_size), quantization=quantization,
      max_detections=nms['max_num_detections'] if max_detections is None else max_detections,
      score_threshold=(nms['pre_nms_score_threshold'] if score_threshold is None
                       else score_threshold),
      nms_iou_threshold=(nms['nms_iou_threshold'] if nms_iou_threshold is None
                         else nms_iou_threshold),
      use_regular_nms=use_regular_nms, normalized_coordinates=normalized_coordinates,
      num_calibration_images=num_calibration_images)
  config.validate()
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f'--output {output} exists; pass --overwrite to replace it.')
  if quantization == 'int8':
    representative_data = representative_data or task.train_data.file_pattern
    if not representative_data:
      raise ValueError('--quantization=int8 needs --representative_data (a TFRecord pattern) '
                       'or TRAIN_FILE_PATTERN in the gin config.')
    from official_spinenet.data import retinanet_input  # pylint: disable=g-import-not-at-top
    retinanet_input.list_files(representative_data)  # ValueError when nothing matches
  elif representative_data:
    raise ValueError('--representative_data is for --quantization=int8 only.')
  names = export.load_category_names(category_names)
  loaded = export.build_and_restore(task, checkpoint_path, gin_files, gin_params)
  return tflite_export.export_tflite(loaded.model, output, config,
                                     representative_data=representative_data,
                                     category_names=names, overwrite=overwrite)


def define_flags() -> None:
  flags.DEFINE_multi_string('gin_file', [], 'Gin files the model was trained with.')
  flags.DEFINE_multi_string('gin_param', [], 'Gin bindings applied after the files.')
  flags.DEFINE_string('checkpoint', None, 'A checkpoint prefix or a model dir (newest).')
  flags.DEFINE_string('output', None, 'The .tflite file to write (and <output>.json).')
  flags.DEFINE_enum('quantization', 'float', tflite_export.QUANTIZATIONS,
                    'float, or int8 post-training quantization (needs representative data).')
  flags.DEFINE_string('representative_data', None, 'int8: TFRecord pattern of calibration '
                      'images (default: the gin config\'s TRAIN_FILE_PATTERN).')
  flags.DEFINE_integer('num_calibration_images', 100, 'int8: images used for calibration.')
  flags.DEFINE_float('score_threshold', None, 'Drop detections below this (> 0; default: '
                     'RetinaNetTask.pre_nms_score_threshold).')
  flags.DEFINE_integer('max_detections', None, 'Detections per image (default: '
                       'RetinaNetTask.max_num_detections).')
  flags.DEFINE_float('nms_iou_threshold', None, 'NMS IoU threshold (default: '
                     'RetinaNetTask.nms_iou_threshold).')
  flags.DEFINE_boolean('use_regular_nms', True, 'Per-class NMS as in the SavedModel; false: '
                       "the op's faster class-agnostic NMS.")
  flags.DEFINE_boolean('normalized_coordinates', False, 'Boxes in [0, 1] of the model input '
                       'instead of pixels.')
  flags.DEFINE_string('category_names_json', None, 'Class names for the .json (COCO '
                      'annotation file, {"id": "name"} or a list).')
  flags.DEFINE_boolean('overwrite', False, 'Replace an existing --output.')
  flags.mark_flags_as_required(['checkpoint', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.gin_file:
    raise app.UsageError('Give at least one --gin_file (the config the model was trained with).')
  try:
    path = export_tflite_from_checkpoint(
        FLAGS.gin_file, FLAGS.gin_param, FLAGS.checkpoint, FLAGS.output,
        quantization=FLAGS.quantization, representative_data=FLAGS.representative_data,
        score_threshold=FLAGS.score_threshold, max_detections=FLAGS.max_detections,
        nms_iou_threshold=FLAGS.nms_iou_threshold, use_regular_nms=FLAGS.use_regular_nms,
        normalized_coordinates=FLAGS.normalized_coordinates,
        num_calibration_images=FLAGS.num_calibration_images,
        category_names=FLAGS.category_names_json, overwrite=FLAGS.overwrite)
  except (ValueError, FileExistsError) as e:
    raise app.UsageError(str(e)) from e
  print(f'Wrote {path} and {path}.json')


if __name__ == '__main__':
  define_flags()
  app.run(main)

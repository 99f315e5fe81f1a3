r"""spinenet-export-tflite: gin config + checkpoint -> TFLite detector, float or int8.

  spinenet-export-tflite --gin_file=retinanet/spinenet_mobile49_384.gin \
      --checkpoint=/ckpts/retinanet_mobile49 --output=/tmp/spinenet_mobile49.tflite

  # int8 post-training quantization, calibrated on 100 images of the TFRecords:
  spinenet-export-tflite --gin_file=retinanet/spinenet_mobile49_384.gin \
      --checkpoint=/ckpts/retinanet_mobile49 --output=/tmp/spinenet_mobile49_int8.tflite \
      --quantization=int8 --representative_data='/data/coco/val-*'

The model ends in TFLite's TFLite_Detection_PostProcess op (boxes, scores, class ids);
<output>.json beside it describes input and outputs. See workflows/tflite.py and
serving/tflite_export.py.
"""

from absl import app
from absl import flags

from official_spinenet.serving import tflite_export
from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import tflite

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, so importing this module registers none)."""
  fv = dict(flag_values=flag_values)
  flag_groups.define_gin_flags(flag_values, purpose='the model as it was trained')
  flag_groups.define_checkpoint_flag(flag_values)
  flag_groups.define_nms_flags(flag_values)
  flags.DEFINE_string('output', None, 'The .tflite file to write (and <output>.json).', **fv)
  flags.DEFINE_enum(
    'quantization',
    'float',
    tflite_export.QUANTIZATIONS,
    'float, or int8 post-training quantization (needs representative data).',
    **fv,
  )
  flags.DEFINE_string(
    'representative_data',
    None,
    'int8: TFRecord pattern of calibration images (default: the gin config\'s TRAIN_FILE_PATTERN).',
    **fv,
  )
  flags.DEFINE_integer('num_calibration_images', 100, 'int8: images used for calibration.', **fv)
  flags.DEFINE_boolean(
    'use_regular_nms',
    True,
    'Per-class NMS as in the SavedModel; false: the op\'s faster class-agnostic NMS.',
    **fv,
  )
  flags.DEFINE_boolean(
    'normalized_coordinates', False, 'Boxes in [0, 1] of the model input instead of pixels.', **fv
  )
  flag_groups.define_category_names_flag(flag_values, 'Class names for the .json')
  flags.DEFINE_boolean('overwrite', False, 'Replace an existing --output.', **fv)
  flags.mark_flags_as_required(['checkpoint', 'output'], flag_values=flag_values)


def main(argv) -> None:
  """flags -> workflows.tflite.export_tflite_from_checkpoint()."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors():
    path = tflite.export_tflite_from_checkpoint(
      FLAGS.gin_file,
      FLAGS.gin_param,
      FLAGS.checkpoint,
      FLAGS.output,
      **flag_groups.nms_options(FLAGS),
      quantization=FLAGS.quantization,
      representative_data=FLAGS.representative_data,
      use_regular_nms=FLAGS.use_regular_nms,
      normalized_coordinates=FLAGS.normalized_coordinates,
      num_calibration_images=FLAGS.num_calibration_images,
      category_names=FLAGS.category_names_json,
      overwrite=FLAGS.overwrite,
    )
  print(f'Wrote {path} and {path}.json')


def run() -> None:
  """Console-script entry point (`spinenet-export-tflite`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

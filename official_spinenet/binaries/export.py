r"""spinenet-export: gin config + checkpoint -> SavedModel for TF Serving.

  spinenet-export \
    --gin_file=demo/retinanet_spinenet_found_shapes.gin \
    --checkpoint=/tmp/spinenet_demo/model \
    --export_dir=/models/shapes/1 \
    --score_threshold=0.05 --max_detections=100 \
    --category_names_json=/tmp/spinenet_demo/data/annotations/instances_val.json

See workflows/export.py (the library call) and docs/serving.md (signatures, outputs,
TF Serving). The NMS options default to the task's evaluation settings. A Mask R-CNN
config (e.g. --gin_file=demo/maskrcnn_spinenet_shapes.gin) adds detection_masks, crop
masks unless --mask_output=pasted. A classification config exports a classifier (top-k
classes, scores and names per image; --top_k), e.g.

  spinenet-export --gin_file=demo/classification_spinenet_shapes.gin \
    --checkpoint=/tmp/spinenet_demo_cls/model --export_dir=/models/shapes_cls/1
"""

from absl import app
from absl import flags

from official_spinenet.serving import export_lib
from official_spinenet.serving import preprocessing
from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import export

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, so importing this module registers none)."""
  fv = dict(flag_values=flag_values)
  flag_groups.define_gin_flags(flag_values, purpose='the model as it was trained')
  flag_groups.define_checkpoint_flag(flag_values)
  flag_groups.define_nms_flags(flag_values, pre_nms_top_k=True)
  flags.DEFINE_string(
    'export_dir',
    None,
    'SavedModel folder to write; for TF Serving a version folder such as /models/spinenet/1.',
    **fv,
  )
  flags.DEFINE_boolean(
    'apply_nms',
    True,
    'False: export decoded boxes and scores of every anchor instead of detections.',
    **fv,
  )
  flags.DEFINE_integer('batch_size', None, 'Fixed batch size (default: dynamic).', **fv)
  flags.DEFINE_integer(
    'max_image_pixels',
    preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
    'Refuse larger images (height * width) at serving time.',
    **fv,
  )
  flags.DEFINE_boolean('overwrite', False, 'Replace a non-empty --export_dir.', **fv)
  flags.DEFINE_integer(
    'exit_index',
    None,
    'Anytime NAS-FPN models: the exit to export '
    '(1-based, negative from the end; default: the task\'s eval_exit).',
    **fv,
  )
  flags.DEFINE_enum(
    'mask_output',
    export_lib.DEFAULT_MASK_OUTPUT,
    export_lib.MASK_OUTPUTS,
    'Mask R-CNN: crop = float [B, N, 28, 28] masks over each box (small; paste with the '
    'box), pasted = uint8 [B, N, H, W] in the image\'s pixels.',
    **fv,
  )
  flags.DEFINE_integer(
    'top_k',
    None,
    'Classifiers (ClassificationTask): classes returned per image (default: the task\'s top_k).',
    lower_bound=1,
    **fv,
  )
  flag_groups.define_category_names_flag(
    flag_values, 'Detectors: class names recorded in the export'
  )
  flags.mark_flags_as_required(['checkpoint', 'export_dir'], flag_values=flag_values)


def main(argv) -> None:
  """flags -> workflows.export.export_from_checkpoint()."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors():
    export_dir = export.export_from_checkpoint(
      FLAGS.gin_file,
      FLAGS.gin_param,
      FLAGS.checkpoint,
      FLAGS.export_dir,
      **flag_groups.nms_options(FLAGS),
      apply_nms=FLAGS.apply_nms,
      batch_size=FLAGS.batch_size,
      max_image_pixels=FLAGS.max_image_pixels,
      category_names=FLAGS.category_names_json,
      overwrite=FLAGS.overwrite,
      exit_index=FLAGS.exit_index,
      mask_output=FLAGS.mask_output,
      top_k=FLAGS.top_k,
    )
  print(f'Exported a SavedModel to {export_dir}')


def run() -> None:
  """Console-script entry point (`spinenet-export`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

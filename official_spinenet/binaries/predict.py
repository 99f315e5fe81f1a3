r"""spinenet-predict: run a detector over image files; write COCO results and drawings.

From an exported SavedModel:

  spinenet-predict --saved_model=/models/shapes/1 \
    --images=/data/shapes/val --images='/more/*.jpg' --output_dir=/tmp/predictions

or from the training gin config and a checkpoint (no export needed):

  spinenet-predict --gin_file=demo/retinanet_spinenet_found_shapes.gin \
    --checkpoint=/tmp/spinenet_demo/model --images=/tmp/spinenet_demo/data/val \
    --annotation_file=/tmp/spinenet_demo/data/annotations/instances_val.json \
    --output_dir=/tmp/predictions

--output_dir receives detections.json (COCO results), images.json (image ids, sizes,
failures) and one PNG per image with its detections drawn (off with --nodraw); a Mask
R-CNN model adds each mask as COCO RLE ("segmentation") and fills it in the drawings; see
workflows/predict.py. An image that fails (corrupt, too large) is reported and the
others carry on; the exit status is then 1.

A classifier (its export, or a classification gin config + checkpoint) prints each image's
top-k classes and scores and writes them to --output_dir/classifications.jsonl (one JSON
line per image: path, classes, scores, class_names).
"""

import sys

from absl import app
from absl import flags

from official_spinenet.serving import client_lib
from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import predict

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, so importing this module registers none)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string(
    'saved_model',
    None,
    'A spinenet-export SavedModel folder. Or give --gin_file and --checkpoint instead.',
    **fv,
  )
  flag_groups.define_gin_flags(flag_values, purpose='the model (without --saved_model)')
  flag_groups.define_checkpoint_flag(flag_values, help_prefix='Without --saved_model: ')
  flag_groups.define_nms_flags(flag_values, help_prefix='Without --saved_model: ')
  flags.DEFINE_multi_string(
    'images',
    None,
    'Image files, folders (their .jpg/.jpeg/.png) or '
    'globs; repeat the flag or separate them by commas.',
    **fv,
  )
  flags.DEFINE_string(
    'output_dir', None, 'Where detections.json, images.json and the drawings go.', **fv
  )
  flags.DEFINE_string(
    'annotation_file',
    None,
    'A COCO annotation file: image ids (matched by file name) and class names come from it.',
    **fv,
  )
  flag_groups.define_category_names_flag(
    flag_values, "Class names (over the model's and the annotation file's)"
  )
  flags.DEFINE_integer('batch_size', 8, 'Images per model call.', lower_bound=1, **fv)
  flags.DEFINE_boolean('draw', True, 'Write a PNG per image with the detections drawn.', **fv)
  flags.DEFINE_float('draw_min_score', 0.3, 'Draw detections scoring at least this.', **fv)
  flags.mark_flags_as_required(['images', 'output_dir'], flag_values=flag_values)


def main(argv) -> None:
  """flags -> workflows.predict.predict()."""
  flag_groups.no_positional_arguments(argv)
  images = [v for value in FLAGS.images for v in value.split(',') if v]
  with flag_groups.usage_errors((ValueError,)):
    summary = predict.predict(
      images,
      FLAGS.output_dir,
      saved_model=FLAGS.saved_model,
      gin_files=FLAGS.gin_file,
      gin_params=FLAGS.gin_param,
      checkpoint=FLAGS.checkpoint,
      nms_options=flag_groups.nms_options(FLAGS),
      category_names=FLAGS.category_names_json,
      annotation_file=FLAGS.annotation_file,
      batch_size=FLAGS.batch_size,
      draw=FLAGS.draw,
      draw_min_score=FLAGS.draw_min_score,
    )
  if 'classifications_file' in summary:  # a classifier: its top-k per image
    for line in summary['images']:
      top_k = client_lib.ImageClassification(line['classes'], line['scores'], line['class_names'])
      print(client_lib.format_classification(line['path'], top_k))
    print(f'{len(summary["images"])} image(s) classified: {summary["classifications_file"]}')
  else:
    print(
      f'{len(summary["images"])} image(s), {summary["num_detections"]} detections: '
      f'{summary["detections_file"]}, {summary["images_file"]}'
      + (f', drawings in {FLAGS.output_dir}' if FLAGS.draw else '')
    )
  if summary['failed']:
    # Each was printed as FAILED <path>: <problem> when it failed.
    sys.exit(f'{len(summary["failed"])} image(s) failed (the FAILED lines above).')


def run() -> None:
  """Console-script entry point (`spinenet-predict`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

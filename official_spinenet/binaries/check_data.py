r"""spinenet-check-data: finds corrupt TFRecords and bad examples before a run does.

  spinenet-check-data --file_pattern='/data/coco/train-*'
  spinenet-check-data --file_pattern='/data/coco/val-*' \
      --annotation_file=/data/coco/annotations/instances_val2017.json
  spinenet-check-data --file_pattern='/data/train-*' --max_records=100   # a quick look

Reads every record (CRCs, truncation, files that are not TFRecords) and checks each
tf.Example: required features, that the image decodes at its stated size, boxes in
[0, 1] with ymin <= ymax and xmin <= xmax and no NaN, and with --annotation_file that
each record's image id is in the annotation file. Prints a per-file table and the
first problems of each bad file; exits 1 if anything is bad, 0 if all is fine.
Library: `official_spinenet.data.record_check`.
"""

import os
import sys

# Before TensorFlow loads: its C++ start-up messages would bury the table.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags

from official_spinenet.data import record_check
from official_spinenet.utils import flags as flag_groups

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string(
    'file_pattern', None, 'TFRecord glob(s), comma-separated allowed.', required=True, **fv
  )
  flags.DEFINE_integer(
    'max_records', None, 'Records read per file (default: all).', lower_bound=1, **fv
  )
  flags.DEFINE_string(
    'annotation_file',
    None,
    'A COCO annotation JSON; each record\'s image/source_id must be one of its image ids.',
    **fv,
  )
  flags.DEFINE_enum(
    'kind',
    'detection',
    sorted(record_check.REQUIRED_FEATURES),
    'Which features a record must have: detection (boxes, labels) or classification.',
    **fv,
  )
  flags.DEFINE_boolean(
    'decode_images', True, 'Decode every image (the slow part, ~1-5 ms an image).', **fv
  )


def main(argv) -> None:
  """flags -> record_check.check_data(); prints the report, exit status 1 if anything is bad."""
  flag_groups.no_positional_arguments(argv)
  with flag_groups.usage_errors((ValueError,)):  # no file matches, a bad annotation file
    reports = record_check.check_data(
      FLAGS.file_pattern,
      max_records=FLAGS.max_records,
      annotation_file=FLAGS.annotation_file,
      kind=FLAGS.kind,
      decode_images=FLAGS.decode_images,
    )
  print(record_check.format_report(reports), flush=True)
  if not all(report.ok for report in reports):
    sys.exit(1)


def run() -> None:
  """Console-script entry point (`spinenet-check-data`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

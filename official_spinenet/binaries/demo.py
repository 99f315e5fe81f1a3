r"""spinenet-demo: shapes data -> train a small SpineNet detector -> COCO AP.

  spinenet-demo --output_dir=/tmp/spinenet_demo                   # RetinaNet
  spinenet-demo --output_dir=/tmp/spinenet_demo --task=maskrcnn   # Mask R-CNN

Writes the synthetic shapes dataset (unless it is already there), trains the
task's demo config (gin_configs/demo/retinanet_spinenet_shapes.gin or
maskrcnn_spinenet_shapes.gin) and prints the COCO metrics of the held-out split
(boxes, and masks for Mask R-CNN; `workflows.demo.run_demo`). Running it again
resumes from the last checkpoint. `tools/measure_demo.py` times it against its
target.
"""

import os

from absl import app
from absl import flags

from official_spinenet.utils import flags as flag_groups
from official_spinenet.workflows import demo

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the flags (at run time, never at import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string(
    'output_dir',
    '/tmp/spinenet_demo',
    'Data go to <output_dir>/data, checkpoints and metrics to <output_dir>/model '
    '(Mask R-CNN: <output_dir>/model_maskrcnn).',
    **fv,
  )
  flags.DEFINE_enum(
    'task', 'retinanet', demo.DEMO_TASKS, 'The demo model: RetinaNet or Mask R-CNN.', **fv
  )
  flags.DEFINE_integer('num_train', 1000, 'Training images to generate.', lower_bound=1, **fv)
  flags.DEFINE_integer('num_val', 200, 'Held-out images to generate.', lower_bound=1, **fv)
  flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings, e.g. "TRAIN_STEPS = 300".', **fv)


def main(argv) -> None:
  """flags -> workflows.demo.run_demo(); prints the metrics."""
  flag_groups.no_positional_arguments(argv)
  result = demo.run_demo(
    FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.gin_param, task=FLAGS.task
  )
  print(
    f'COCO metrics on the {result.num_val} held-out shapes images '
    f'({os.path.join(result.model_dir, "metrics.json")}):'
  )
  print(demo.format_metrics(result.metrics))


def run() -> None:
  """Console-script entry point (`spinenet-demo`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

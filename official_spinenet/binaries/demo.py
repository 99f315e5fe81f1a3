r"""spinenet-demo: shapes data -> train a small SpineNet -> held-out metrics.

  spinenet-demo --output_dir=/tmp/spinenet_demo                         # RetinaNet
  spinenet-demo --output_dir=/tmp/spinenet_demo --task=maskrcnn         # Mask R-CNN
  spinenet-demo --output_dir=/tmp/spinenet_demo --task=classification   # classifier

Writes the task's synthetic shapes dataset (unless it is already there), trains
the task's demo config (gin_configs/demo/<task>_spinenet_shapes.gin) and prints
the metrics of the held-out split: COCO AP of boxes (and masks for Mask R-CNN),
or top-1 / top-5 accuracy over the 12 shapes classes (`workflows.demo.run_demo`).
Running it again resumes from the last checkpoint. `tools/measure_demo.py` times
it against its target.
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
    'Data go to <output_dir>/data (classification: data_classification), checkpoints '
    'and metrics to <output_dir>/model (model_maskrcnn, model_classification).',
    **fv,
  )
  flags.DEFINE_enum(
    'task',
    'retinanet',
    demo.DEMO_TASKS,
    'The demo model: RetinaNet, Mask R-CNN or a classifier.',
    **fv,
  )
  defaults = ', '.join(f'{t} {n[0]}/{n[1]}' for t, n in demo.DEMO_NUM_IMAGES.items())
  flags.DEFINE_integer(
    'num_train',
    None,
    f'Training images to generate (default per task, training/held-out: {defaults}).',
    lower_bound=1,
    **fv,
  )
  flags.DEFINE_integer(
    'num_val', None, 'Held-out images to generate (default: see --num_train).', lower_bound=1, **fv
  )
  flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings, e.g. "TRAIN_STEPS = 300".', **fv)


def main(argv) -> None:
  """flags -> workflows.demo.run_demo(); prints the metrics."""
  flag_groups.no_positional_arguments(argv)
  result = demo.run_demo(
    FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.gin_param, task=FLAGS.task
  )
  print(
    f'Metrics on the {result.num_val} held-out shapes images '
    f'({os.path.join(result.model_dir, "metrics.json")}):'
  )
  print(demo.format_metrics(result.metrics))


def run() -> None:
  """Console-script entry point (`spinenet-demo`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

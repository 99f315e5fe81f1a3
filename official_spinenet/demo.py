r"""spinenet-demo: shapes data -> train a small SpineNet RetinaNet -> COCO AP.

  spinenet-demo --output_dir=/tmp/spinenet_demo

Writes the synthetic shapes dataset (unless it is already there), then runs
`spinenet-train --mode=train_and_eval` with gin_configs/demo/retinanet_spinenet_shapes.gin
and prints the COCO metrics of the held-out split. Running it again resumes from
the last checkpoint. `tools/measure_demo.py` times it against its target.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from official_spinenet import train
from official_spinenet.data import shapes

FLAGS = flags.FLAGS
DEMO_GIN_FILE = 'demo/retinanet_spinenet_shapes.gin'


def define_flags() -> None:
  flags.DEFINE_string('output_dir', '/tmp/spinenet_demo', 'Data go to <output_dir>/data, '
                      'checkpoints and metrics to <output_dir>/model.')
  flags.DEFINE_integer('num_train', 1000, 'Training images to generate.', lower_bound=1)
  flags.DEFINE_integer('num_val', 200, 'Held-out images to generate.', lower_bound=1)
  flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings, e.g. '
                            '"TRAIN_STEPS = 300".')


def make_data(data_dir: str, num_train: int, num_val: int):
  """The shapes dataset in data_dir, generated unless a finished copy is there."""
  marker = os.path.join(data_dir, 'dataset.json')
  if os.path.exists(marker):
    with open(marker) as f:
      paths = json.load(f)
    if (paths['train']['num_images'], paths['val']['num_images']) == (num_train, num_val):
      logging.info('Using the shapes dataset in %s.', data_dir)
      return paths
  paths = shapes.make_shapes_dataset(data_dir, num_train=num_train, num_val=num_val,
                                     image_size=128, seed=0)
  tmp = marker + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(paths, f, indent=2)
  os.replace(tmp, marker)  # Written last: its presence means the data are complete.
  return paths


def format_metrics(metrics) -> str:
  """A small table of the COCO metrics (per-class AP last)."""
  lines = [f'{name:>24s}  {value:.3f}' for name, value in metrics.items() if '/' not in name]
  lines += [f'{name:>24s}  {value:.3f}' for name, value in metrics.items() if '/' in name]
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  paths = make_data(os.path.join(FLAGS.output_dir, 'data'), FLAGS.num_train, FLAGS.num_val)
  data_params = [
      f"TRAIN_FILE_PATTERN = '{paths['train']['tfrecord_pattern']}'",
      f"EVAL_FILE_PATTERN = '{paths['val']['tfrecord_pattern']}'",
      f"ANNOTATION_FILE = '{paths['val']['annotation_file']}'",
  ]
  model_dir = os.path.join(FLAGS.output_dir, 'model')
  metrics = train.launch([DEMO_GIN_FILE], data_params + FLAGS.gin_param, model_dir,
                         mode='train_and_eval')
  print(f'COCO metrics on the {FLAGS.num_val} held-out shapes images '
        f'({os.path.join(model_dir, "metrics.json")}):')
  print(format_metrics(metrics))


def run():
  """Console-script entry point (`spinenet-demo`)."""
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()

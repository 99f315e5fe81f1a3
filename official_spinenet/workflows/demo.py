"""The demo: shapes data -> train a small SpineNet RetinaNet -> COCO AP (`spinenet-demo`).

  result = demo.run_demo('/tmp/spinenet_demo')
  print(demo.format_metrics(result.metrics))

Writes the synthetic shapes dataset to <output_dir>/data (unless a finished copy
is there), then trains and evaluates gin_configs/demo/retinanet_spinenet_shapes.gin
(`spinenet-train --mode=train_and_eval`) in <output_dir>/model. Running it again
resumes from the last checkpoint. `time_demo_command` times the whole command from
a fresh process, as `tools/measure_demo.py` does.
"""

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from official_spinenet.data import shapes
from official_spinenet.utils import files
from official_spinenet.utils import tables
from official_spinenet.workflows import train

DEMO_GIN_FILE = 'demo/retinanet_spinenet_shapes.gin'
DEMO_IMAGE_SIZE = 128
# The binary `time_demo_command` runs (in a fresh process, as a user would).
DEMO_MODULE = 'official_spinenet.binaries.demo'


@dataclasses.dataclass
class DemoResult:
  """What a demo run produced.

  Attributes:
    metrics: the held-out COCO metrics (AP, AP50, ..., per-class 'AP/<name>').
    model_dir: checkpoints and metrics.json.
    num_val: held-out images evaluated.
  """

  metrics: Dict[str, float]
  model_dir: str
  num_val: int


def shapes_data_params(paths: Mapping[str, Mapping[str, Any]]) -> List[str]:
  """The gin bindings of the data macros for a shapes dataset (`make_shapes_dataset`)."""
  params = [f"TRAIN_FILE_PATTERN = '{paths['train']['tfrecord_pattern']}'"]
  if 'val' in paths:
    params += [
      f"EVAL_FILE_PATTERN = '{paths['val']['tfrecord_pattern']}'",
      f"ANNOTATION_FILE = '{paths['val']['annotation_file']}'",
    ]
  return params


def run_demo(
  output_dir: str, num_train: int = 1000, num_val: int = 200, gin_params: Sequence[str] = ()
) -> DemoResult:
  """Makes (or reuses) the shapes data, then trains and evaluates the demo model.

  Args:
    output_dir: data go to <output_dir>/data, the model to <output_dir>/model.
    num_train: training images to generate.
    num_val: held-out images to generate (and evaluate on).
    gin_params: extra gin bindings, e.g. 'TRAIN_STEPS = 300'.

  Returns:
    The metrics and where they are.
  """
  paths = shapes.ensure_shapes_dataset(
    os.path.join(output_dir, 'data'), num_train, num_val, image_size=DEMO_IMAGE_SIZE, seed=0
  )
  model_dir = os.path.join(output_dir, 'model')
  metrics = train.launch(
    [DEMO_GIN_FILE], shapes_data_params(paths) + list(gin_params), model_dir, mode='train_and_eval'
  )
  return DemoResult(metrics=metrics, model_dir=model_dir, num_val=num_val)


def format_metrics(metrics: Mapping[str, float]) -> str:
  """A table of the COCO metrics (per-class AP last)."""
  rows = [(name, value) for name, value in metrics.items() if '/' not in name]
  rows += [(name, value) for name, value in metrics.items() if '/' in name]
  return tables.format_table(('metric', 'value'), rows, digits=3)


def time_demo_command(output_dir: str, gin_params: Sequence[str] = ()) -> Dict[str, Any]:
  """Runs `spinenet-demo` from nothing in a fresh process and times it.

  Everything after `pip install` counts: Python and TensorFlow start-up, data
  generation, training and evaluation.

  Args:
    output_dir: a fresh folder for the run (the caller empties it).
    gin_params: passed through as --gin_param.

  Returns:
    {'returncode', 'minutes', 'metrics'} (metrics: the run's metrics.json, None
    if the run failed).
  """
  command = [sys.executable, '-m', DEMO_MODULE, f'--output_dir={output_dir}']
  command += [f'--gin_param={p}' for p in gin_params]
  start = time.perf_counter()
  returncode = subprocess.run(command, check=False).returncode
  minutes = (time.perf_counter() - start) / 60
  metrics: Optional[Dict[str, Any]] = None
  if not returncode:
    metrics = files.read_json(os.path.join(output_dir, 'model', 'metrics.json'), 'Demo metrics')
  return {'returncode': returncode, 'minutes': minutes, 'metrics': metrics}

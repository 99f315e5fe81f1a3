"""The demos: shapes data -> train a small SpineNet detector -> COCO AP (`spinenet-demo`).

  result = demo.run_demo('/tmp/spinenet_demo')                    # RetinaNet
  result = demo.run_demo('/tmp/spinenet_demo', task='maskrcnn')   # Mask R-CNN
  print(demo.format_metrics(result.metrics))

Writes the synthetic shapes dataset (with instance masks) to <output_dir>/data
(unless a finished copy is there), then trains and evaluates the task's demo gin
file (`DEMO_GIN_FILES`, `spinenet-train --mode=train_and_eval`) in
<output_dir>/<model folder> (`DEMO_MODEL_DIRS`): both demos share one dataset.
Running it again resumes from the last checkpoint. `time_demo_command` times the
whole command from a fresh process, as `tools/measure_demo.py` does, and
`DEMO_TARGETS` are the held-out metrics each demo must reach within 15 minutes
on a 2-core CPU.
"""

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from official_spinenet.data import shapes
from official_spinenet.utils import files
from official_spinenet.utils import tables
from official_spinenet.workflows import train

# Demo task -> its gin file (relative to the packaged gin_configs/).
DEMO_GIN_FILES = {
  'retinanet': 'demo/retinanet_spinenet_shapes.gin',
  'maskrcnn': 'demo/maskrcnn_spinenet_shapes.gin',
}
DEMO_TASKS = tuple(DEMO_GIN_FILES)
# Demo task -> its model folder under the output dir.
DEMO_MODEL_DIRS = {'retinanet': 'model', 'maskrcnn': 'model_maskrcnn'}
# Demo task -> (metric, minimum) pairs the held-out split must reach: AP50 for
# RetinaNet (issue 3); COCO AP@[.5:.95] of boxes and masks for Mask R-CNN (issue 10).
DEMO_TARGETS: Dict[str, Tuple[Tuple[str, float], ...]] = {
  'retinanet': (('AP50', 0.8),),
  'maskrcnn': (('AP', 0.45), ('mask_AP', 0.40)),
}
# Demo task -> further metrics `target_rows` reports beside the targets.
DEMO_REPORTED = {
  'retinanet': ('AP', 'AP75'),
  'maskrcnn': ('AP50', 'AP75', 'mask_AP50', 'mask_AP75'),
}
DEMO_TARGET_MINUTES = 15.0
DEMO_IMAGE_SIZE = 128
# The binary `time_demo_command` runs (in a fresh process, as a user would).
DEMO_MODULE = 'official_spinenet.binaries.demo'


@dataclasses.dataclass
class DemoResult:
  """What a demo run produced.

  Attributes:
    metrics: the held-out COCO metrics (AP, AP50, ..., per-class 'AP/<name>';
      Mask R-CNN adds 'mask_AP', ..., 'mask_AP/<name>').
    model_dir: checkpoints and metrics.json.
    num_val: held-out images evaluated.
  """

  metrics: Dict[str, float]
  model_dir: str
  num_val: int


def _check_task(task: str) -> None:
  if task not in DEMO_GIN_FILES:
    raise ValueError(f'Unknown demo task {task!r}; choose one of {DEMO_TASKS}.')


def demo_model_dir(output_dir: str, task: str = 'retinanet') -> str:
  """Where the demo of `task` writes checkpoints and metrics.json."""
  _check_task(task)
  return os.path.join(output_dir, DEMO_MODEL_DIRS[task])


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
  output_dir: str,
  num_train: int = 1000,
  num_val: int = 200,
  gin_params: Sequence[str] = (),
  task: str = 'retinanet',
) -> DemoResult:
  """Makes (or reuses) the shapes data, then trains and evaluates the demo model.

  Args:
    output_dir: data go to <output_dir>/data, the model to
      `demo_model_dir(output_dir, task)`.
    num_train: training images to generate.
    num_val: held-out images to generate (and evaluate on).
    gin_params: extra gin bindings, e.g. 'TRAIN_STEPS = 300'.
    task: one of DEMO_TASKS ('retinanet' or 'maskrcnn').

  Returns:
    The metrics and where they are.

  Raises:
    ValueError: an unknown task (before any data is written).
  """
  model_dir = demo_model_dir(output_dir, task)
  paths = shapes.ensure_shapes_dataset(
    os.path.join(output_dir, 'data'), num_train, num_val, image_size=DEMO_IMAGE_SIZE, seed=0
  )
  metrics = train.launch(
    [DEMO_GIN_FILES[task]],
    shapes_data_params(paths) + list(gin_params),
    model_dir,
    mode='train_and_eval',
  )
  return DemoResult(metrics=metrics, model_dir=model_dir, num_val=num_val)


def format_metrics(metrics: Mapping[str, float]) -> str:
  """A table of the COCO metrics (per-class AP last)."""
  rows = [(name, value) for name, value in metrics.items() if '/' not in name]
  rows += [(name, value) for name, value in metrics.items() if '/' in name]
  return tables.format_table(('metric', 'value'), rows, digits=3)


def time_demo_command(
  output_dir: str, gin_params: Sequence[str] = (), task: str = 'retinanet'
) -> Dict[str, Any]:
  """Runs `spinenet-demo --task=<task>` from nothing in a fresh process and times it.

  Everything after `pip install` counts: Python and TensorFlow start-up, data
  generation, training and evaluation.

  Args:
    output_dir: a fresh folder for the run (the caller empties it).
    gin_params: passed through as --gin_param.
    task: one of DEMO_TASKS.

  Returns:
    {'returncode', 'minutes', 'metrics'} (metrics: the run's metrics.json, None
    if the run failed).
  """
  model_dir = demo_model_dir(output_dir, task)
  command = [sys.executable, '-m', DEMO_MODULE, f'--output_dir={output_dir}', f'--task={task}']
  command += [f'--gin_param={p}' for p in gin_params]
  start = time.perf_counter()
  returncode = subprocess.run(command, check=False).returncode
  minutes = (time.perf_counter() - start) / 60
  metrics: Optional[Dict[str, Any]] = None
  if not returncode:
    metrics = files.read_json(os.path.join(model_dir, 'metrics.json'), 'Demo metrics')
  return {'returncode': returncode, 'minutes': minutes, 'metrics': metrics}


def target_rows(
  task: str, metrics: Mapping[str, float], minutes: float, target_minutes: float
) -> Tuple[List[Tuple[Any, ...]], bool]:
  """Rows (name, value, target, 'ok' / 'MISSED') of a demo run against its targets,
  then the task's DEMO_REPORTED metrics (no target).

  Args:
    task: one of DEMO_TASKS (its DEMO_TARGETS).
    metrics: the run's metrics.json.
    minutes: the run's wall time.
    target_minutes: the wall time it must stay within.

  Returns:
    (rows, whether every target was met).
  """
  _check_task(task)
  checks = [
    ('wall time (min)', f'{minutes:.1f}', f'<= {target_minutes:g}', minutes <= target_minutes)
  ]
  for name, minimum in DEMO_TARGETS[task]:
    checks.append((name, metrics[name], f'>= {minimum}', metrics[name] >= minimum))
  rows = [(name, value, target, 'ok' if ok else 'MISSED') for name, value, target, ok in checks]
  rows += [(name, metrics[name], None, None) for name in DEMO_REPORTED[task] if name in metrics]
  return rows, all(check[-1] for check in checks)

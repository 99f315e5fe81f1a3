"""AP against latency for every exit of one anytime NAS-FPN RetinaNet (issue 4).

`run_tradeoff` does what `tools/anytime_tradeoff.py` reports:

1. Writes the synthetic shapes dataset (as `spinenet-demo` does) unless it is there.
2. Trains gin_configs/demo/nasfpn_anytime_shapes.gin (`spinenet-train --mode=train`:
   deep supervision over every NAS-FPN repeat), unless a trained model dir is
   given (its operative_config.gin is then the configuration).
3. For every exit k (the head after NAS-FPN repeat k), on the same trained weights:
   - COCO AP / AP50 on the shapes val split, through the task's own evaluator with
     `eval_exit = k` (only the repeats up to k run);
   - CPU latency at batch 1: `model.detect(image, exit_index=k)` (forward of the
     first k repeats + post-processing), in one tf.function per exit, median over
     the runs; the exits are timed in turn within each round so that other load on
     the machine affects them alike;
   - multiply-adds (`model_stats.count_multiply_adds`) of that exit.
4. Writes a Markdown table and an AP-vs-latency plot (docs_dir) and the numbers as
   JSON (<output_dir>/anytime_tradeoff.json).
"""

import dataclasses
import os
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from official_spinenet import configurables
from official_spinenet.data import shapes
from official_spinenet.modeling import model_stats
from official_spinenet.utils import checkpoint_paths
from official_spinenet.utils import files
from official_spinenet.utils import tables
from official_spinenet.utils import timing
from official_spinenet.workflows import demo
from official_spinenet.workflows import train

GIN_FILE = 'demo/nasfpn_anytime_shapes.gin'
TABLE_HEADER = (
  'exit',
  'NAS-FPN repeats run',
  'AP',
  'AP50',
  'latency ms (median)',
  'latency vs last exit',
  'multiply-adds (M)',
)


@dataclasses.dataclass
class TradeoffOptions:
  """What `run_tradeoff` measures and where it writes (the tool's flags)."""

  output_dir: str = '/tmp/anytime_tradeoff'
  model_dir: Optional[str] = None  # a trained run to measure instead of training one
  train_steps: Optional[int] = None  # default: the gin file's
  gin_params: Sequence[str] = ()
  num_train: int = 1000
  num_val: int = 200
  latency_runs: int = 50
  warmup_runs: int = 5
  docs_dir: str = ''  # where anytime_tradeoff.md and .png go ('' : not written)


def evaluate_exit(task, model, exit_index: int) -> Dict[str, float]:
  """COCO metrics of one exit over the eval split, via the task's evaluator."""
  task.eval_exit = exit_index
  step = tf.function(lambda inputs, labels: task.eval_outputs(model, inputs, labels))
  evaluator = task.build_evaluator()
  for inputs, labels in task.build_inputs(is_training=False):
    evaluator.update({k: v.numpy() for k, v in step(inputs, labels).items()})
  return {k: float(v) for k, v in evaluator.result().items()}


def time_exits(
  model, image: tf.Tensor, num_exits: int, runs: int, warmup_runs: int
) -> Dict[int, List[float]]:
  """Seconds per `detect` call of each exit at batch 1; exits interleaved per round."""
  functions = {}
  for k in range(1, num_exits + 1):
    detect = tf.function(lambda x, k=k: model.detect(x, exit_index=k, training=False))
    functions[k] = lambda detect=detect: detect(image)
    timing.time_calls(functions[k], runs=1, warmup=warmup_runs)  # traces, then warms up
  times = {k: [] for k in functions}
  for run in range(runs):
    order = list(functions)
    order = order[run % num_exits :] + order[: run % num_exits]  # rotate who goes first
    for k in order:
      times[k] += timing.time_calls(functions[k], runs=1, warmup=0)[0]
  return times


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
  """The Markdown table of the exits (latency also relative to the last exit)."""
  last = rows[-1]
  cells = [
    (
      r['exit'],
      f"{r['exit']} of {last['exit']}",
      r['AP'],
      r['AP50'],
      f"{r['latency_ms']:.1f}",
      f"{r['latency_ms'] / last['latency_ms']:.2f}x",
      f"{r['multiply_adds'] / 1e6:.0f}",
    )
    for r in rows
  ]
  return tables.format_table(TABLE_HEADER, cells, markdown=True, left_columns=0)


def plot(rows: Sequence[Dict[str, Any]], path: str, title: str) -> None:
  """AP and AP50 against latency, one point per exit, as a PNG (written atomically)."""
  from official_spinenet.utils import charts  # pylint: disable=g-import-not-at-top

  latency = [r['latency_ms'] for r in rows]
  fig = charts.figure(6.4, 4.4, dpi=120)
  ax = fig.subplots()
  for key, style in (('AP50', 's--'), ('AP', 'o-')):
    values = [r[key] for r in rows]
    ax.plot(latency, values, style, label=key)
    for r, v in zip(rows, values):
      ax.annotate(
        f"exit {r['exit']}",
        (r['latency_ms'], v),
        textcoords='offset points',
        xytext=(4, -11 if key == 'AP' else 5),
        fontsize=8,
      )
  charts.label(
    ax,
    'CPU latency at batch 1, forward + post-processing (ms, median)',
    'COCO AP on the shapes val split',
    title,
    legend='lower right',
  )
  charts.save_png(fig, path)


def markdown(table: str, setup: Dict[str, Any]) -> str:
  """docs/anytime_tradeoff.md: what was measured, how, the table and the plot."""
  trained = (
    f"trained here for {setup['step']} steps in {setup['train_minutes']:.1f} min"
    if setup['train_minutes'] is not None
    else f"step {setup['step']}"
  )
  command = ' '.join(['python tools/anytime_tradeoff.py'] + setup['flags'])
  load = ', '.join(f'{l:.1f}' for l in setup['load_average'])
  return f"""# Anytime detection: AP vs latency per exit

One anytime RetinaNet (`{setup['gin_file']}`, {setup['params'] / 1e6:.2f}M parameters:
a NAS-FPN with a {'separate' if setup['separate_heads'] else 'shared'} RetinaNet head
after every repeat, trained with deep supervision), {trained}. Exit k runs NAS-FPN
repeats 1..k and predicts with the head there.

- AP: COCO AP on the {setup['num_val_images']} images of the shapes val split (the
  task's evaluator with `eval_exit = k`).
- Latency: `model.detect(image, exit_index=k)` (forward + post-processing) on one
  {setup['image_size'][0]}x{setup['image_size'][1]} image, median of {setup['latency_runs']}
  runs on {setup['cpus']} CPU cores; load average {load} while measuring (other jobs
  shared the machine).
- Multiply-adds: conv and dense layers for one image.

{table}

![AP vs latency per exit](anytime_tradeoff.png)

Produced by `{command}`.
"""


def _trained_model(options: TradeoffOptions, params: List[str]) -> Tuple[str, str, Any]:
  """(model dir, gin file, training minutes or None): trains unless options.model_dir."""
  if options.model_dir:
    gin_file = os.path.join(options.model_dir, 'operative_config.gin')
    if not tf.io.gfile.exists(gin_file):
      raise ValueError(f'--model_dir {options.model_dir!r} has no operative_config.gin.')
    return options.model_dir, gin_file, None
  model_dir = os.path.join(options.output_dir, 'model')
  start = time.perf_counter()
  train.launch([GIN_FILE], params, model_dir, mode='train')
  return model_dir, GIN_FILE, (time.perf_counter() - start) / 60


def _measure_exits(task, model, options: TradeoffOptions) -> List[Dict[str, Any]]:
  """One row per exit: AP, AP50, AP75, latency (median, p10, p90), multiply-adds."""
  height, width = task.image_size
  image = next(iter(task.build_inputs(is_training=False)))[0][:1]
  times = time_exits(model, image, model.num_exits, options.latency_runs, options.warmup_runs)
  rows = []
  for k in range(1, model.num_exits + 1):
    metrics = evaluate_exit(task, model, k)
    rows.append(
      {
        'exit': k,
        'AP': metrics['AP'],
        'AP50': metrics['AP50'],
        'AP75': metrics['AP75'],
        'latency_ms': 1000 * statistics.median(times[k]),
        'latency_p10_ms': 1000 * float(np.percentile(times[k], 10)),
        'latency_p90_ms': 1000 * float(np.percentile(times[k], 90)),
        'multiply_adds': model_stats.count_multiply_adds(
          model.exit_model(k), [1, height, width, 3]
        ),
      }
    )
    logging.info('exit %d: %s', k, rows[-1])
  return rows


def _write_outputs(
  options: TradeoffOptions, rows, table: str, setup: Dict[str, Any], title: str
) -> None:
  files.write_json_atomically(
    {'setup': setup, 'rows': rows}, os.path.join(options.output_dir, 'anytime_tradeoff.json')
  )
  if options.docs_dir:
    plot(rows, os.path.join(options.docs_dir, 'anytime_tradeoff.png'), title)
    files.atomic_write(
      os.path.join(options.docs_dir, 'anytime_tradeoff.md'), markdown(table, setup)
    )


def run_tradeoff(options: TradeoffOptions) -> Tuple[str, Dict[str, Any]]:
  """Data, training (unless options.model_dir), measurement, outputs (see module doc).

  Returns:
    (the Markdown table, the setup: checkpoint, step, flags, machine, ...).
  """
  paths = shapes.ensure_shapes_dataset(
    os.path.join(options.output_dir, 'data'),
    options.num_train,
    options.num_val,
    image_size=demo.DEMO_IMAGE_SIZE,
    seed=0,
  )
  params = demo.shapes_data_params(paths) + list(options.gin_params)
  if options.train_steps:
    params.append(f'TRAIN_STEPS = {options.train_steps}')
  model_dir, gin_file, train_minutes = _trained_model(options, params)
  configurables.parse_gin([gin_file], params)
  task = configurables.build_experiment()['task']
  model = task.build_model()
  checkpoint = checkpoint_paths.resolve_checkpoint(model_dir, '--model_dir')
  tf.train.Checkpoint(**task.checkpoint_items(model)).read(
    checkpoint
  ).expect_partial().assert_existing_objects_matched()
  step = int(checkpoint.rsplit('-', 1)[-1])
  logging.info('Measuring %s (step %d), %d exits.', checkpoint, step, model.num_exits)
  rows = _measure_exits(task, model, options)
  setup = {
    'checkpoint': checkpoint,
    'step': step,
    'gin_file': gin_file,
    'flags': ([f'--train_steps={options.train_steps}'] if options.train_steps else [])
    + [f'--latency_runs={options.latency_runs}']
    + [f'--gin_param="{p}"' for p in options.gin_params],
    'train_minutes': train_minutes,
    'num_val_images': paths['val']['num_images'],
    'image_size': list(task.image_size),
    'separate_heads': model.separate_heads,
    'params': model_stats.count_params(model),
    'latency_runs': options.latency_runs,
    'cpus': os.cpu_count(),
    'load_average': os.getloadavg(),
  }
  table = format_table(rows)
  title = (
    f'Anytime NAS-FPN RetinaNet, shapes demo ({model.num_exits} exits, '
    f'{"separate" if model.separate_heads else "shared"} head, step {step})'
  )
  _write_outputs(options, rows, table, setup, title)
  return table, setup

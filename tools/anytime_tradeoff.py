r"""AP against latency for every exit of one anytime NAS-FPN RetinaNet (issue 4).

  python tools/anytime_tradeoff.py                       # train the demo, then measure
  python tools/anytime_tradeoff.py --model_dir=/tmp/anytime_tradeoff/model   # measure only
  python tools/anytime_tradeoff.py --train_steps=300 --latency_runs=20       # quicker

1. Writes the synthetic shapes dataset (as `spinenet-demo` does) unless it is there.
2. Trains gin_configs/demo/nasfpn_anytime_shapes.gin (`spinenet-train --mode=train`:
   deep supervision over every NAS-FPN repeat), unless --model_dir names a trained
   run (its operative_config.gin is then the configuration).
3. For every exit k (the head after NAS-FPN repeat k), on the same trained weights:
   - COCO AP / AP50 on the shapes val split, through the task's own evaluator with
     `eval_exit = k` (only the repeats up to k run);
   - CPU latency at batch 1: `model.detect(image, exit_index=k)` (forward of the
     first k repeats + post-processing), in one tf.function per exit, median over
     --latency_runs runs; the exits are timed in turn within each round so that
     other load on the machine affects them alike;
   - multiply-adds (`model_stats.count_multiply_adds`) of that exit.
4. Prints a markdown table, writes it to docs/anytime_tradeoff.md and plots AP vs
   latency to docs/anytime_tradeoff.png (--docs_dir), and the numbers as JSON to
   <output_dir>/anytime_tradeoff.json.
"""

import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
  from official_spinenet import configurables
except ImportError:
  # Run as `python tools/anytime_tradeoff.py` without the package installed.
  sys.path.insert(0, REPO)
  from official_spinenet import configurables  # pylint: disable=g-import-not-at-top
# pylint: disable=g-import-not-at-top,g-bad-import-order
from official_spinenet import demo
from official_spinenet import train
from official_spinenet.modeling import model_stats
# pylint: enable=g-import-not-at-top,g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', '/tmp/anytime_tradeoff', 'Data go to <output_dir>/data, '
                    'the trained model to <output_dir>/model.')
flags.DEFINE_string('model_dir', None, 'A trained anytime run to measure instead of '
                    'training one (its operative_config.gin is used).')
flags.DEFINE_integer('train_steps', None, 'Training steps (default: the gin file\'s).')
flags.DEFINE_multi_string('gin_param', [], 'Extra gin bindings for training and evaluation.')
flags.DEFINE_integer('num_train', 1000, 'Training images to generate.')
flags.DEFINE_integer('num_val', 200, 'Held-out images to generate.')
flags.DEFINE_integer('latency_runs', 50, 'Timed runs per exit (median reported).')
flags.DEFINE_integer('warmup_runs', 5, 'Untimed runs per exit after tracing.')
flags.DEFINE_string('docs_dir', os.path.join(REPO, 'docs'), 'Where anytime_tradeoff.md and '
                    '.png go (empty: do not write them).')

GIN_FILE = 'demo/nasfpn_anytime_shapes.gin'


def _data_params(paths: Dict[str, Any]) -> List[str]:
  return [f"TRAIN_FILE_PATTERN = '{paths['train']['tfrecord_pattern']}'",
          f"EVAL_FILE_PATTERN = '{paths['val']['tfrecord_pattern']}'",
          f"ANNOTATION_FILE = '{paths['val']['annotation_file']}'"]


def evaluate_exit(task, model, exit_index: int) -> Dict[str, float]:
  """COCO metrics of one exit over the eval split, via the task's evaluator."""
  task.eval_exit = exit_index
  step = tf.function(lambda inputs, labels: task.eval_outputs(model, inputs, labels))
  evaluator = task.build_evaluator()
  for inputs, labels in task.build_inputs(is_training=False):
    evaluator.update({k: v.numpy() for k, v in step(inputs, labels).items()})
  return {k: float(v) for k, v in evaluator.result().items()}


def time_exits(model, image: tf.Tensor, num_exits: int, runs: int,
               warmup_runs: int) -> Dict[int, List[float]]:
  """Seconds per `detect` call of each exit at batch 1; exits interleaved per round."""
  functions = {}
  for k in range(1, num_exits + 1):
    functions[k] = tf.function(
        lambda x, k=k: model.detect(x, exit_index=k, training=False))
    for _ in range(1 + warmup_runs):  # The first call traces.
      _block(functions[k](image))
  times = {k: [] for k in functions}
  for run in range(runs):
    order = list(functions)
    order = order[run % num_exits:] + order[:run % num_exits]  # rotate who goes first
    for k in order:
      start = time.perf_counter()
      _block(functions[k](image))
      times[k].append(time.perf_counter() - start)
  return times


def _block(outputs) -> None:
  """Waits for the results (numpy() forces the computation)."""
  for value in tf.nest.flatten(outputs):
    value.numpy()


def format_table(rows: List[Dict[str, Any]]) -> str:
  lines = ['| exit | NAS-FPN repeats run | AP | AP50 | latency ms (median) | '
           'latency vs last exit | multiply-adds (M) |',
           '|---:|---:|---:|---:|---:|---:|---:|']
  last = rows[-1]
  for r in rows:
    lines.append(f"| {r['exit']} | {r['exit']} of {last['exit']} | {r['AP']:.3f} | "
                 f"{r['AP50']:.3f} | {r['latency_ms']:.1f} | "
                 f"{r['latency_ms'] / last['latency_ms']:.2f}x | "
                 f"{r['multiply_adds'] / 1e6:.0f} |")
  return '\n'.join(lines)


def plot(rows: List[Dict[str, Any]], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  latency = [r['latency_ms'] for r in rows]
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  for key, style in (('AP50', 's--'), ('AP', 'o-')):
    values = [r[key] for r in rows]
    ax.plot(latency, values, style, label=key)
    for r, v in zip(rows, values):
      ax.annotate(f"exit {r['exit']}", (r['latency_ms'], v), textcoords='offset points',
                  xytext=(4, -11 if key == 'AP' else 5), fontsize=8)
  ax.set_xlabel('CPU latency at batch 1, forward + post-processing (ms, median)')
  ax.set_ylabel('COCO AP on the shapes val split')
  ax.set_title(title, fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  paths = demo.make_data(os.path.join(FLAGS.output_dir, 'data'), FLAGS.num_train,
                         FLAGS.num_val)
  params = _data_params(paths) + list(FLAGS.gin_param)
  if FLAGS.train_steps:
    params.append(f'TRAIN_STEPS = {FLAGS.train_steps}')
  train_minutes = None
  if FLAGS.model_dir:
    model_dir = FLAGS.model_dir
    gin_file = os.path.join(model_dir, 'operative_config.gin')
    if not os.path.exists(gin_file):
      raise app.UsageError(f'--model_dir {model_dir!r} has no operative_config.gin.')
  else:
    model_dir, gin_file = os.path.join(FLAGS.output_dir, 'model'), GIN_FILE
    start = time.time()
    train.launch([gin_file], params, model_dir, mode='train')
    train_minutes = (time.time() - start) / 60

  configurables.parse_gin([gin_file], params)
  experiment = configurables.build_experiment()
  task = experiment['task']
  model = task.build_model()
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if checkpoint is None:
    raise app.UsageError(f'No checkpoint in {model_dir!r}.')
  tf.train.Checkpoint(**task.checkpoint_items(model)).read(
      checkpoint).expect_partial().assert_existing_objects_matched()
  step = int(checkpoint.rsplit('-', 1)[-1])
  logging.info('Measuring %s (step %d), %d exits.', checkpoint, step, model.num_exits)

  height, width = task.image_size
  image = next(iter(task.build_inputs(is_training=False)))[0][:1]
  times = time_exits(model, image, model.num_exits, FLAGS.latency_runs, FLAGS.warmup_runs)
  rows = []
  for k in range(1, model.num_exits + 1):
    metrics = evaluate_exit(task, model, k)
    rows.append({
        'exit': k, 'AP': metrics['AP'], 'AP50': metrics['AP50'], 'AP75': metrics['AP75'],
        'latency_ms': 1000 * statistics.median(times[k]),
        'latency_p10_ms': 1000 * float(np.percentile(times[k], 10)),
        'latency_p90_ms': 1000 * float(np.percentile(times[k], 90)),
        'multiply_adds': model_stats.count_multiply_adds(model.exit_model(k),
                                                         [1, height, width, 3]),
    })
    logging.info('exit %d: %s', k, rows[-1])

  table = format_table(rows)
  setup = {
      'checkpoint': checkpoint, 'step': step, 'gin_file': gin_file,
      'flags': ([f'--train_steps={FLAGS.train_steps}'] if FLAGS.train_steps else []) + [
          f'--latency_runs={FLAGS.latency_runs}'] + [
              f'--gin_param="{p}"' for p in FLAGS.gin_param],
      'train_minutes': train_minutes, 'num_val_images': paths['val']['num_images'],
      'image_size': [height, width], 'separate_heads': model.separate_heads,
      'params': model_stats.count_params(model), 'latency_runs': FLAGS.latency_runs,
      'cpus': os.cpu_count(), 'load_average': os.getloadavg(),
  }
  print(table)
  print(json.dumps(setup, indent=1))
  with open(os.path.join(FLAGS.output_dir, 'anytime_tradeoff.json'), 'w') as f:
    json.dump({'setup': setup, 'rows': rows}, f, indent=1)
  if FLAGS.docs_dir:
    os.makedirs(FLAGS.docs_dir, exist_ok=True)
    title = (f'Anytime NAS-FPN RetinaNet, shapes demo ({model.num_exits} exits, '
             f'{"separate" if model.separate_heads else "shared"} head, step {step})')
    plot(rows, os.path.join(FLAGS.docs_dir, 'anytime_tradeoff.png'), title)
    with open(os.path.join(FLAGS.docs_dir, 'anytime_tradeoff.md'), 'w') as f:
      f.write(_markdown(table, setup))


def _markdown(table: str, setup: Dict[str, Any]) -> str:
  trained = (f"trained here for {setup['step']} steps in {setup['train_minutes']:.1f} min"
             if setup['train_minutes'] is not None else f"step {setup['step']}")
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


if __name__ == '__main__':
  app.run(main)

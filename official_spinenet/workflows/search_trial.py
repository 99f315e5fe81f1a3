"""One trial of the architecture search: train the proxy, evaluate it, measure the model.

  proxy = proxy_config.ProxyConfig()   # search/proxy_spinenet_shapes.gin
  result = search_trial.run_proxy_trial(
      ["spinenet.block_specs = '/run/trial_3/block_specs.json'"], proxy, '/run/trial_3',
      data_params=demo.shapes_data_params(paths), num_threads=1)
  result['reward'], result['AP'], result['latency_ms']

The proxy (SpineNet Sec. 4.1, NAS-FPN Sec. 3.1: a short training run of the sampled
architecture) is `spinenet-train --mode=train_and_eval` on the proxy's gin files with
the data and architecture bindings last, so a trial is an ordinary training run in
its trial dir (checkpoints, metrics.json, operative_config.gin; a restarted trial
resumes). The trained model is then rebuilt from the same bindings with the final
checkpoint's weights and measured: trainable parameters, multiply-adds of the whole
detector at the proxy's image size (`model_stats`) and the median CPU latency of its
forward pass (backbone, decoder, head; no NMS) at batch 1. The result also goes to
<trial_dir>/trial_metrics.json.

Failures propagate for the caller to score the trial as failed: a bad binding or
architecture raises ValueError (naming it), a diverging loss the trainer's
FloatingPointError, a missing or NaN evaluation metric ValueError.
"""

import math
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf

from official_spinenet.modeling import model_stats
from official_spinenet.search import proxy_config
from official_spinenet.utils import files
from official_spinenet.utils import timing
from official_spinenet.workflows import loading
from official_spinenet.workflows import train

TRIAL_METRICS_FILE = 'trial_metrics.json'
# Evaluation metrics every trial reports besides its reward metric.
REPORTED_METRICS = ('AP', 'AP50')
# Untimed forward passes before the latency runs (the first one traces).
LATENCY_WARMUP = 2


def set_num_threads(num_threads: Optional[int]) -> None:
  """Limits TensorFlow's CPU threads (intra-op: num_threads; inter-op: 1).

  Concurrent trials on one machine each get their share of the cores this way. It
  only works before TensorFlow runs its first op: Ray starts a trial in a fresh
  worker process, so it does there; in a process that already ran TF (e.g. tests)
  the setting is logged and left as it is.

  Raises:
    ValueError: num_threads < 1.
  """
  if num_threads is None:
    return
  if num_threads < 1:
    raise ValueError(f'num_threads must be >= 1 (or None), got {num_threads}.')
  try:
    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    # One op at a time: parallel branches would otherwise take more cores than given.
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError as e:
    logging.warning('Cannot set TF threads to %d (TF already initialised): %s', num_threads, e)


def checked_metrics(metrics: Mapping[str, float], reward_metric: str) -> Dict[str, float]:
  """The reward metric and REPORTED_METRICS of an evaluation, all finite.

  Raises:
    ValueError: one is missing or not finite (the message names it).
  """
  checked = {}
  for name in dict.fromkeys((reward_metric,) + REPORTED_METRICS):
    value = metrics.get(name)
    if value is None:
      raise ValueError(
        f'The proxy evaluation has no metric {name!r} (ProxyConfig.reward_metric or a '
        f'reported metric); it gave {sorted(metrics)}.'
      )
    if not math.isfinite(value):
      raise ValueError(f'The proxy evaluation gave {name} = {value}: the trial failed.')
    checked[name] = float(value)
  return checked


def latency_ms(model, image_size: Sequence[int], runs: int) -> float:
  """Median milliseconds of `runs` forward passes of `model` on one image (after warm-up)."""
  height, width = image_size
  images = tf.random.uniform([1, height, width, 3], seed=0)
  forward = tf.function(lambda: model(images, training=False))
  return 1000.0 * timing.median_seconds(forward, runs, warmup=LATENCY_WARMUP)


def measure_model(
  proxy: proxy_config.ProxyConfig, gin_params: Sequence[str], trial_dir: str
) -> Dict[str, float]:
  """Params and multiply-adds (proxy image size), latency (proxy.latency_image_size).

  The model is rebuilt from the trial's gin config with its final checkpoint's
  weights (`loading.load_model`); another latency size builds the same weights at
  that size (the configs' IMAGE_SIZE macro).
  """
  loaded = loading.load_model(proxy.gin_files, gin_params, trial_dir)
  image_size = loaded.task.image_size
  stats = {
    'params': float(model_stats.count_params(loaded.model)),
    'multiply_adds': float(model_stats.count_multiply_adds(loaded.model, [1, *image_size, 3])),
  }
  model, size = loaded.model, proxy.latency_image_size
  if size and (size, size) != tuple(image_size):
    latency_params = list(gin_params) + [f'IMAGE_SIZE = {size}']
    model = loading.load_model(proxy.gin_files, latency_params, trial_dir).model
    image_size = (size, size)
  stats['latency_ms'] = latency_ms(model, image_size, proxy.latency_runs)
  return stats


def trial_gin_params(
  proxy: proxy_config.ProxyConfig,
  architecture_bindings: Sequence[str],
  data_params: Sequence[str] = (),
) -> List[str]:
  """The bindings of a trial, in order: proxy, data, then architecture (which wins)."""
  return list(proxy.gin_params) + list(data_params) + list(architecture_bindings)


def run_proxy_trial(
  architecture_bindings: Sequence[str],
  proxy: proxy_config.ProxyConfig,
  trial_dir: str,
  data_params: Sequence[str] = (),
  num_threads: Optional[int] = None,
) -> Dict[str, float]:
  """Trains and evaluates the proxy on one architecture, then measures the model.

  Args:
    architecture_bindings: gin bindings of the sampled architecture, e.g.
      `SearchSpace.gin_bindings(specs_path)`.
    proxy: the proxy task and reward shaping.
    trial_dir: the trial's model dir (resumed if it holds a checkpoint).
    data_params: the data macros (TRAIN_FILE_PATTERN, EVAL_FILE_PATTERN,
      ANNOTATION_FILE), e.g. `demo.shapes_data_params(paths)`.
    num_threads: TF intra-op threads (None: TF's default, all cores).

  Returns:
    {'reward', <reward_metric>, 'AP', 'AP50', 'params', 'multiply_adds',
    'latency_ms', 'train_seconds'} as floats; 'train_seconds' is the wall time of
    train_and_eval (model build, training, evaluation).

  Raises:
    ValueError: a bad gin binding or architecture, or a missing / NaN metric.
    FloatingPointError: the training loss diverged.
  """
  set_num_threads(num_threads)
  gin_params = trial_gin_params(proxy, architecture_bindings, data_params)
  start = time.perf_counter()
  metrics = train.launch(proxy.gin_files, gin_params, trial_dir, mode='train_and_eval')
  train_seconds = time.perf_counter() - start
  result = checked_metrics(metrics, proxy.reward_metric)
  result.update(measure_model(proxy, gin_params, trial_dir))
  result['train_seconds'] = train_seconds
  result['reward'] = float(
    proxy_config.shaped_reward(
      result[proxy.reward_metric], result['latency_ms'], result['multiply_adds'], proxy
    )
  )
  files.write_json_atomically(result, os.path.join(trial_dir, TRIAL_METRICS_FILE))
  logging.info(
    'Proxy trial in %s: %s', trial_dir, ', '.join(f'{k} {v:.4g}' for k, v in result.items())
  )
  return result

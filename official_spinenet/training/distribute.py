"""tf.distribute strategies by name, and precision policies.

one_device: one GPU (or the CPU). mirrored: all local GPUs (or the given devices)
with all-reduce. multi_worker_mirrored: the same across the hosts TF_CONFIG
describes. tpu: a Cloud TPU (pod slice) by name or address.
"""

import json
import os
from typing import Optional, Sequence

from absl import logging
import tensorflow as tf
import tf_keras

from official_spinenet.utils import cpu_features

STRATEGIES = ('one_device', 'mirrored', 'multi_worker_mirrored', 'tpu')
PRECISIONS = ('float32', 'float16', 'bfloat16')
AUTO_PRECISION = 'auto'  # resolved by `resolve_precision`
PRECISION_CHOICES = PRECISIONS + (AUTO_PRECISION,)  # what --mixed_precision accepts


def build_strategy(
  name: str, num_gpus: int = 0, tpu: Optional[str] = None, devices: Optional[Sequence[str]] = None
) -> tf.distribute.Strategy:
  """A strategy by name.

  Args:
    name: one of STRATEGIES.
    num_gpus: GPUs to use for one_device (0: CPU) and mirrored (0: all visible
      GPUs, or the CPU if there is none).
    tpu: TPU name or grpc:// address for 'tpu' ('' or 'local' for a TPU VM).
    devices: explicit device list for 'mirrored' (e.g. two logical CPUs in tests).

  Raises:
    ValueError: unknown name, or more GPUs asked for than visible, or 'tpu'
      without a TPU.
  """
  if name not in STRATEGIES:
    raise ValueError(f'Unknown --strategy {name!r}; choose one of {STRATEGIES}.')
  if name in ('one_device', 'mirrored'):
    # Not for multi-worker: collective ops must be configured before anything
    # initialises the runtime, and listing logical devices does.
    visible_gpus = len(tf.config.list_logical_devices('GPU'))
    if not 0 <= num_gpus <= visible_gpus:
      raise ValueError(f'--num_gpus={num_gpus} but {visible_gpus} GPU(s) are visible.')
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy('/gpu:0' if num_gpus else '/cpu:0')
  if name == 'mirrored':
    if devices is None and num_gpus:
      devices = [f'/gpu:{i}' for i in range(num_gpus)]
    return tf.distribute.MirroredStrategy(devices=devices)
  if name == 'multi_worker_mirrored':
    if 'TF_CONFIG' not in os.environ:
      raise ValueError(
        '--strategy=multi_worker_mirrored needs the TF_CONFIG environment '
        'variable (cluster and task of each worker).'
      )
    try:
      json.loads(os.environ['TF_CONFIG'])
    except ValueError as e:
      raise ValueError(f'TF_CONFIG is not valid JSON: {e}') from e
    return tf.distribute.MultiWorkerMirroredStrategy()
  if tpu is None:
    raise ValueError('--strategy=tpu needs --tpu (a TPU name, grpc:// address, or "local").')
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu='' if tpu == 'local' else tpu)
  if tpu not in ('', 'local'):
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def resolve_precision(precision: str, strategy: str, native_bfloat16: Optional[bool] = None) -> str:
  """The precision to train in: 'auto' picks one, bfloat16 on a CPU without it warns.

  'auto' is bfloat16 on TPUs and on CPUs with native bfloat16 (AVX512-BF16 or
  AMX-BF16, where it measured 1.05-1.12x faster than float32 for the demo's model),
  and float32 elsewhere: on GPUs (float16 needs loss scaling; ask for it) and on
  CPUs that would emulate bfloat16.

  Args:
    precision: one of PRECISION_CHOICES.
    strategy: the strategy's name (one of STRATEGIES).
    native_bfloat16: whether the CPU has native bfloat16 (default: detected).

  Raises:
    ValueError: an unknown precision.
  """
  if precision not in PRECISION_CHOICES:
    raise ValueError(f'Unknown --mixed_precision {precision!r}; choose one of {PRECISION_CHOICES}.')
  on_cpu = strategy != 'tpu' and not tf.config.list_physical_devices('GPU')
  if on_cpu and precision in ('bfloat16', AUTO_PRECISION):
    if native_bfloat16 is None:
      native_bfloat16 = cpu_features.has_native_bfloat16()
    if precision == 'bfloat16' and not native_bfloat16:
      logging.warning(
        '--mixed_precision=bfloat16 on a CPU without AVX512-BF16 or AMX-BF16: every '
        'kernel converts to float32 and back, so training is slower than in float32.'
      )
  if precision != AUTO_PRECISION:
    return precision
  if strategy == 'tpu':
    return 'bfloat16'
  chosen = 'bfloat16' if on_cpu and native_bfloat16 else 'float32'
  logging.info('--mixed_precision=auto: %s.', chosen)
  return chosen


def set_precision(precision: str) -> None:
  """Sets the tf_keras global policy: float32, mixed_float16 or mixed_bfloat16."""
  if precision not in PRECISIONS:
    raise ValueError(f'Unknown --mixed_precision {precision!r}; choose one of {PRECISIONS}.')
  tf_keras.mixed_precision.set_global_policy(
    'float32' if precision == 'float32' else f'mixed_{precision}'
  )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one worker that writes checkpoints and summaries."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return (
    task_type is None
    or task_type == 'chief'
    or (task_type == 'worker' and task_id == 0 and 'chief' not in resolver.cluster_spec().jobs)
  )


def worker_id(strategy: tf.distribute.Strategy) -> str:
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or resolver.task_type is None:
    return 'chief'
  return f'{resolver.task_type}_{resolver.task_id}'

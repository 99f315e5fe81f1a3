"""RetinaNet input pipeline: TFRecords -> (images, labels) batches.

Decoding and parsing are Model Garden's `TfExampleDecoder` and retinanet `Parser`
(random horizontal flip, scale jitter, resize-and-pad to a multiple of
2^max_level, anchor labeling); this module only wires the tf.data pipeline. They
are loaded (`model_garden.load`) when a dataset is built, not with this module
(importing `official.vision` pulls in its whole task registry).
"""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from official_spinenet import model_garden


def list_files(file_pattern: str) -> Sequence[str]:
  """Sorted files matching a pattern (or comma-separated patterns); ValueError if none."""
  patterns = [p.strip() for p in str(file_pattern).split(',') if p.strip()]
  files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
  if not files:
    raise ValueError(f'No files match the input pattern {file_pattern!r}.')
  return files


def build_retinanet_dataset(
  file_pattern: str,
  is_training: bool,
  global_batch_size: int,
  image_size: Tuple[int, int],
  min_level: int,
  max_level: int,
  num_scales: int = 3,
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
  anchor_size: float = 4.0,
  aug_scale_min: float = 1.0,
  aug_scale_max: float = 1.0,
  aug_rand_hflip: bool = True,
  input_context: Optional[tf.distribute.InputContext] = None,
  shuffle_buffer_size: int = 1000,
  match_threshold: float = 0.5,
  unmatched_threshold: float = 0.5,
  max_num_instances: int = 100,
  seed: Optional[int] = None,
  dtype: str = 'float32',
) -> tf.data.Dataset:
  """A dataset of (images [B, H', W', 3], labels) for RetinaNet.

  H', W' are image_size rounded up to a multiple of 2^max_level. Training data
  is sharded (by input_context), shuffled, augmented (hflip if aug_rand_hflip,
  scale jitter in [aug_scale_min, aug_scale_max]) and repeated; evaluation data
  is read once, unaugmented, and also carries labels['groundtruths'].

  Args:
    file_pattern: TFRecord glob (comma-separated globs allowed).
    is_training: training (augment, shuffle, repeat, drop remainder) or eval.
    global_batch_size: batch size over all replicas; the per-replica batch is
      input_context.get_per_replica_batch_size(global_batch_size).
    image_size: (height, width) of the model input.
    min_level, max_level: anchor levels.
    num_scales, aspect_ratios, anchor_size: anchor settings.
    aug_scale_min, aug_scale_max: random scale jitter range (training only).
    aug_rand_hflip: random horizontal flip (training only).
    input_context: tf.distribute input context, or None.
    shuffle_buffer_size: examples in the shuffle buffer (training).
    match_threshold, unmatched_threshold: anchor IoU thresholds.
    max_num_instances: ground truth padding for eval labels.
    seed: optional shuffle seed.
    dtype: image dtype ('float32' or 'bfloat16').

  Returns:
    tf.data.Dataset of (images, labels).

  Raises:
    ValueError: if file_pattern matches no file, or global_batch_size < 1.
  """
  decoder = model_garden.load('tf_example_decoder').TfExampleDecoder(
    include_mask=False, regenerate_source_id=False
  )
  parser = model_garden.load('retinanet_input').Parser(
    output_size=list(image_size),
    min_level=min_level,
    max_level=max_level,
    num_scales=num_scales,
    aspect_ratios=list(aspect_ratios),
    anchor_size=anchor_size,
    match_threshold=match_threshold,
    unmatched_threshold=unmatched_threshold,
    aug_rand_hflip=aug_rand_hflip and is_training,
    aug_scale_min=aug_scale_min if is_training else 1.0,
    aug_scale_max=aug_scale_max if is_training else 1.0,
    max_num_instances=max_num_instances,
    dtype=dtype,
  )
  return parsed_batches(
    file_pattern,
    is_training,
    global_batch_size,
    input_context,
    shuffle_buffer_size,
    seed,
    decoder.decode,
    parser.parse_fn(is_training),
  )


def parsed_batches(
  file_pattern: str,
  is_training: bool,
  global_batch_size: int,
  input_context: Optional[tf.distribute.InputContext],
  shuffle_buffer_size: int,
  seed: Optional[int],
  decode_fn: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
  parse_fn: Callable[[Dict[str, tf.Tensor]], Any],
) -> tf.data.Dataset:
  """Batches of parse_fn(decode_fn(record)) over this input pipeline's records.

  The one tf.data pipeline of every detection task: per-worker file sharding,
  shuffling and repeat for training (see `_records`), parallel decode and parse,
  batches of the per-replica batch size (remainder dropped for training).

  Raises:
    ValueError: if file_pattern matches no file, or global_batch_size < 1.
  """
  if global_batch_size < 1:
    raise ValueError(f'global_batch_size must be >= 1, got {global_batch_size}.')
  files = list_files(file_pattern)
  batch_size = (
    input_context.get_per_replica_batch_size(global_batch_size)
    if input_context
    else global_batch_size
  )
  dataset = _records(files, is_training, input_context, shuffle_buffer_size, seed)
  dataset = dataset.map(
    lambda serialized: parse_fn(decode_fn(serialized)), num_parallel_calls=tf.data.AUTOTUNE
  )
  dataset = dataset.batch(batch_size, drop_remainder=is_training)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _records(
  files: Sequence[str],
  is_training: bool,
  input_context: Optional[tf.distribute.InputContext],
  shuffle_buffer_size: int,
  seed: Optional[int],
) -> tf.data.Dataset:
  """Serialized records of this input pipeline's share of `files`.

  Training: shuffled (files and records) and repeated; eval: read once, in order.
  """
  pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  # Each input pipeline (worker) reads its own files; with fewer files than
  # pipelines some would get none (and a worker without data stalls the others in
  # the all-reduce), so then every pipeline reads all files in the same order and
  # keeps every pipelines-th record.
  shard_records = pipelines > 1 and len(files) < pipelines
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if pipelines > 1 and not shard_records:
    dataset = dataset.shard(pipelines, pipeline_id)
  if is_training and not shard_records:
    dataset = dataset.shuffle(len(files), seed=seed).repeat()
  dataset = dataset.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(len(files), 8),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=not is_training or shard_records,
  )
  if shard_records:
    dataset = dataset.shard(pipelines, pipeline_id)
    if is_training:
      dataset = dataset.repeat()
  if is_training:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
  return dataset

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
from official_spinenet.data import record_check


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
  skip_corrupt_records: bool = False,
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
    skip_corrupt_records: drop (count and log) records that cannot be read or
      decoded instead of failing (see `parsed_batches`).

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
    skip_corrupt_records=skip_corrupt_records,
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
  skip_corrupt_records: bool = False,
) -> tf.data.Dataset:
  """Batches of parse_fn(decode_fn(record)) over this input pipeline's records.

  The one tf.data pipeline of every detection task: per-worker file sharding,
  shuffling and repeat for training (see `_records`), parallel decode and parse,
  batches of the per-replica batch size (remainder dropped for training).

  With skip_corrupt_records, a file that cannot be read to its end (truncated, bit
  flip, not a TFRecord: TensorFlow's DataLossError) gives the records before the bad
  one, and a record that does not decode or parse is dropped; each is logged and
  counted (`record_check.skipped_records()`). Without it (the default) the pipeline
  is the plain one and the first such record stops it with TensorFlow's error.

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
  dataset = _records(
    files, is_training, input_context, shuffle_buffer_size, seed, skip_corrupt_records
  )

  def parse(serialized):
    return parse_fn(decode_fn(serialized))

  if skip_corrupt_records:
    dataset = _parse_skipping_errors(dataset, parse, file_pattern)
  else:
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=is_training)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _records(
  files: Sequence[str],
  is_training: bool,
  input_context: Optional[tf.distribute.InputContext],
  shuffle_buffer_size: int,
  seed: Optional[int],
  skip_corrupt_records: bool = False,
) -> tf.data.Dataset:
  """Serialized records of this input pipeline's share of `files`.

  Training: shuffled (files and records) and repeated; eval: read once, in order.
  skip_corrupt_records: each file is read up to its first unreadable record.
  """
  pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  # Each input pipeline (worker) reads its own files; with fewer files than
  # pipelines some would get none (and a worker without data stalls the others in
  # the all-reduce), so then every pipeline reads all files in the same order and
  # keeps every pipelines-th record.
  shard_records = pipelines > 1 and len(files) < pipelines
  if skip_corrupt_records:
    sizes = tf.constant([tf.io.gfile.stat(f).length for f in files], tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices((files, sizes))
    read_file = _readable_records
  else:
    dataset = tf.data.Dataset.from_tensor_slices(files)
    read_file = tf.data.TFRecordDataset
  if pipelines > 1 and not shard_records:
    dataset = dataset.shard(pipelines, pipeline_id)
  if is_training and not shard_records:
    dataset = dataset.shuffle(len(files), seed=seed).repeat()
  dataset = dataset.interleave(
    read_file,
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


def _readable_records(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
  """The records of one file up to its first unreadable one (which is logged and counted).

  TensorFlow's reader gives up on a file at its first DataLossError (the framing
  cannot be resynced), and silently at a partial header; a file whose records do
  not add up to its size therefore ended early.
  """
  records = tf.data.TFRecordDataset(path).ignore_errors().map(lambda r: (r, False))
  end = tf.data.Dataset.from_tensors((tf.constant(b''), True))
  framing = record_check.HEADER_BYTES + record_check.FOOTER_BYTES

  def count(state, item):
    num_records, offset, reports = state
    record, is_end = item
    if_record = tf.cast(tf.logical_not(is_end), tf.int64)
    num_records += if_record
    offset += if_record * (tf.cast(tf.strings.length(record), tf.int64) + framing)
    reports += tf.cond(
      tf.logical_and(is_end, offset < size),
      lambda: tf.py_function(
        record_check.note_unreadable, [path, num_records, offset, size], tf.int64
      ),
      lambda: tf.constant(0, tf.int64),
    )
    return (num_records, offset, reports), item

  zero = tf.constant(0, tf.int64)
  dataset = records.concatenate(end).scan((zero, zero, zero), count)
  return dataset.filter(lambda record, is_end: tf.logical_not(is_end)).map(lambda r, _: r)


def _parse_skipping_errors(
  records: tf.data.Dataset, parse: Callable[[tf.Tensor], Any], file_pattern: str
) -> tf.data.Dataset:
  """parse(record) of each record that decodes and parses; the others are logged and counted.

  A failing map call cannot be caught in the graph, only dropped (ignore_errors), so the
  records are numbered before the map (which keeps their order) and a gap in the numbers
  after it counts the drops; an end marker, which bypasses parse, closes the count at the
  end of a finite (eval) pass.
  """
  spec = records.map(parse).element_spec

  def blank():
    return tf.nest.map_structure(
      lambda s: tf.zeros([d or 0 for d in s.shape.as_list()] if s.shape.rank else [], s.dtype),
      spec,
    )

  def guarded(index, item):
    record, is_end = item
    return index, is_end, tf.cond(is_end, blank, lambda: parse(record))

  def count(last, item):
    index, _, _ = item
    gap = index - last - 1
    noted = tf.cond(
      gap > 0,
      lambda: tf.py_function(record_check.note_undecodable, [gap, file_pattern], tf.int64),
      lambda: tf.constant(0, tf.int64),
    )
    return index + 0 * noted, item[1:]

  marked = records.map(lambda r: (r, False)).concatenate(
    tf.data.Dataset.from_tensors((tf.constant(b''), True))
  )
  parsed = marked.enumerate().map(guarded, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  parsed = parsed.ignore_errors().scan(tf.constant(-1, tf.int64), count)
  return parsed.filter(lambda is_end, _: tf.logical_not(is_end)).map(lambda _, out: out)

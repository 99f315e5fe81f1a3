"""Corrupt TFRecords in the input pipeline: named in the error, or skipped and counted.

Real files made in the test (tests/corrupt_files.py): a truncated shard, a bit flip,
a PNG named .tfrecord, an empty file and records that do not decode, beside the good
shapes shards.
"""

import os

import pytest
import tensorflow as tf

from official_spinenet import configurables
from official_spinenet.data import record_check
from official_spinenet.data import retinanet_input
from tests import corrupt_files

GOOD_RECORDS = 8  # the shapes training split: 2 shards of 4
# (kind, records read before the problem, what the message says)
UNREADABLE = [
  ('truncated', 3, 'truncated.tfrecord is truncated after record 2: record 3 at byte'),
  ('bit_flip', 1, 'bit_flip.tfrecord has a CRC mismatch in the data of record 1 (bytes'),
  ('png', 0, 'png.tfrecord is not a TFRecord file (it looks like a PNG image)'),
]


@pytest.fixture(scope='module')
def bad_files(shapes_data, tmp_path_factory):
  return corrupt_files.make_corrupt_files(shapes_data, str(tmp_path_factory.mktemp('corrupt')))


def _dataset(file_pattern, skip, is_training=False):
  return retinanet_input.build_retinanet_dataset(
    file_pattern,
    is_training=is_training,
    global_batch_size=1,
    image_size=(128, 128),
    min_level=3,
    max_level=7,
    shuffle_buffer_size=8,
    skip_corrupt_records=skip,
  )


@pytest.mark.parametrize('kind,_,expected', UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_the_error_names_the_shard(shapes_data, bad_files, kind, _, expected):
  pattern = f'{shapes_data["train"]["tfrecord_pattern"]},{bad_files[kind]}'
  with pytest.raises(tf.errors.DataLossError) as raised:
    for _ in _dataset(pattern, skip=False):
      pass
  assert os.path.basename(bad_files[kind]) not in raised.value.message  # why we need this
  message = record_check.data_error_message(raised.value, [pattern])
  assert expected in message.splitlines()[0], message  # the first line names it
  assert 'train-00000' not in message and 'train-00001' not in message, message
  assert 'train/InputConfig.skip_corrupt_records = True' in message
  assert 'eval/InputConfig' in record_check.data_error_message(raised.value, [pattern], 'eval')


def test_without_an_offset_every_crc_is_read(shapes_data, bad_files):
  error = tf.errors.DataLossError(None, None, 'no offset in this message')
  message = record_check.data_error_message(error, [bad_files['bit_flip']])
  assert 'has a CRC mismatch in the data of record 1' in message
  assert record_check.data_error_message(error, [shapes_data['train']['tfrecord_pattern']]) is None


def test_skip_gives_the_good_records_and_counts_the_bad(shapes_data, bad_files):
  pattern = ','.join([shapes_data['train']['tfrecord_pattern']] + sorted(bad_files.values()))
  before = record_check.skipped_records()
  batches = sum(1 for _ in _dataset(pattern, skip=True))
  readable = sum(records for _, records, _ in UNREADABLE)
  assert batches == GOOD_RECORDS + readable + 2  # + the 2 good records of 'undecodable'
  # One per unreadable file (its rest is skipped) and one per record that does not decode;
  # the last record of the last file counts too (the eval pass ends on it).
  assert record_check.skipped_records() - before == len(UNREADABLE) + 2
  # Training (shuffled, repeated, two passes here) does not stop either.
  before = record_check.skipped_records()
  steps = 2 * (GOOD_RECORDS + readable + 2)
  assert sum(1 for _ in _dataset(pattern, skip=True, is_training=True).take(steps)) == steps
  assert record_check.skipped_records() > before


def test_skip_keeps_what_the_pipeline_gives(shapes_data):
  pattern = shapes_data['train']['tfrecord_pattern']
  plain, skipping = _dataset(pattern, skip=False), _dataset(pattern, skip=True)
  assert skipping.element_spec == plain.element_spec
  before = record_check.skipped_records()
  for (images, labels), (images2, labels2) in zip(plain, skipping):
    tf.debugging.assert_equal(images, images2)
    tf.debugging.assert_equal(labels['box_targets']['3'], labels2['box_targets']['3'])
  assert record_check.skipped_records() == before


def _task(shapes_data, train_pattern, *params):
  configurables.parse_gin(
    ['testing/retinanet_tiny.gin'],
    [
      f"TRAIN_FILE_PATTERN = '{train_pattern}'",
      f"EVAL_FILE_PATTERN = '{shapes_data['val']['tfrecord_pattern']}'",
      *params,
    ],
  )
  return configurables.build_experiment()['task']


def test_validate_names_a_file_that_is_no_tfrecord(shapes_data, bad_files):
  pattern = f'{shapes_data["train"]["tfrecord_pattern"]},{bad_files["png"]}'
  task = _task(shapes_data, pattern)
  with pytest.raises(
    ValueError, match=r'png.tfrecord is not a TFRecord file \(it looks like a PNG'
  ):
    task.validate('train')
  assert not task.split_input_args(True, None)['skip_corrupt_records']
  # Skipping is the user's choice: the run goes on (with a warning) and the pipeline skips.
  task = _task(shapes_data, pattern, 'train/InputConfig.skip_corrupt_records = True')
  task.validate('train')
  assert task.split_input_args(True, None)['skip_corrupt_records']
  assert not task.split_input_args(False, None)['skip_corrupt_records']

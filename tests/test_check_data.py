"""spinenet-check-data and its library (`record_check`): framing, examples, annotation ids."""

import os
import re
import struct

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.data import record_check
from tests import binaries
from tests import corrupt_files


@pytest.fixture(scope='module')
def bad_files(shapes_data, tmp_path_factory):
  return corrupt_files.make_corrupt_files(shapes_data, str(tmp_path_factory.mktemp('corrupt')))


def test_masked_crc32c_matches_tensorflow(tmp_path):
  path = str(tmp_path / 'one.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b'hello TFRecord')
  with open(path, 'rb') as f:
    data = f.read()
  assert struct.unpack('<I', data[8:12])[0] == record_check.masked_crc32c(data[:8])
  assert struct.unpack('<I', data[-4:])[0] == record_check.masked_crc32c(b'hello TFRecord')


def test_first_record_header_catches_files_that_are_no_tfrecords(shapes_data, bad_files):
  problems = record_check.first_record_problems(
    shapes_data['train']['tfrecord_files'] + sorted(bad_files.values())
  )
  # The header of the first record is all it reads: the bit flip and the late
  # truncation are the pipeline's (and check-data's) to find.
  assert [os.path.basename(p.path) for p in problems] == ['png.tfrecord']
  assert str(problems[0]).endswith(
    '(it looks like a PNG image): its first record header fails its CRC'
  )


def _bad_boxes_file(shapes_data, path):
  """The first good record, then copies with bad boxes, a missing feature, a wrong size."""
  good = next(iter(tf.data.TFRecordDataset(corrupt_files.good_shard(shapes_data)))).numpy()

  def changed(**features):
    example = tf.train.Example.FromString(good)
    for key, values in features.items():
      feature = example.features.feature[key.replace('__', '/')]
      if values is None:
        del example.features.feature[key.replace('__', '/')]
      elif isinstance(values[0], float):
        feature.float_list.value[:] = values
      else:
        feature.int64_list.value[:] = values
    return example.SerializeToString()

  num_boxes = len(
    tf.train.Example.FromString(good).features.feature['image/object/bbox/xmin'].float_list.value
  )
  records = [
    good,
    changed(**{'image__object__bbox__xmax': [1.5] + [0.9] * (num_boxes - 1)}),
    changed(**{'image__object__bbox__ymin': [float('nan')] * num_boxes}),
    changed(**{'image__object__bbox__xmin': [0.95] * num_boxes}),  # > xmax
    changed(**{'image__encoded': None}),
    changed(**{'image__height': [99]}),
  ]
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


def test_check_data_finds_each_problem(shapes_data, bad_files, tmp_path):
  boxes = str(tmp_path / 'boxes.tfrecord')
  _bad_boxes_file(shapes_data, boxes)
  reports = record_check.check_data(
    ','.join(sorted(bad_files.values()) + [boxes, shapes_data['train']['tfrecord_pattern']])
  )
  by_name = {os.path.basename(r.path): r for r in reports}
  assert [by_name[f'train-0000{i}-of-00002.tfrecord'].ok for i in (0, 1)] == [True, True]
  assert by_name['empty.tfrecord'].ok
  for name, records, fragment in [
    ('truncated', 3, 'is truncated after record 2'),
    ('bit_flip', 1, 'has a CRC mismatch in the data of record 1'),
    ('png', 0, 'is not a TFRecord file (it looks like a PNG image)'),
  ]:
    report = by_name[f'{name}.tfrecord']
    assert (report.records, report.unreadable.record) == (records, records), report
    assert fragment in report.unreadable.what
  undecodable = by_name['undecodable.tfrecord']
  assert (undecodable.records, undecodable.bad_examples) == (4, 2)
  assert 'record 1 (byte' in undecodable.problems[0]
  assert 'not a tf.train.Example' in undecodable.problems[0]
  assert (
    'record 3' in undecodable.problems[1] and 'image does not decode' in undecodable.problems[1]
  )
  problems = by_name['boxes.tfrecord'].problems
  assert by_name['boxes.tfrecord'].bad_examples == 5
  assert 'box coordinates outside [0, 1] (' in problems[0]
  assert 'NaN or infinite box coordinates' in problems[1]
  assert 'box(es) with ymin > ymax or xmin > xmax' in problems[2]
  assert 'missing feature(s) image/encoded' in problems[3]
  assert 'image is 128x128 but image/height x image/width say 99x128' in problems[4]

  text = record_check.format_report(reports)
  assert text.splitlines()[0].split() == ['file', 'status', 'records', 'read', 'bad', 'examples']
  assert re.search(r'png.tfrecord +unreadable from record 0 +0 +0\n', text), text
  assert '5 of 8 file(s) have problems' in text
  assert 'skip_corrupt_records = True' in text


def test_annotation_file_of_another_split_is_caught(shapes_data):
  val = shapes_data['val']
  right = record_check.check_data(val['tfrecord_pattern'], annotation_file=val['annotation_file'])
  assert all(r.ok for r in right)
  # The shapes splits number their images alike (ids 1, 2, ...): the boxes tell them apart.
  wrong = record_check.check_data(
    val['tfrecord_pattern'], annotation_file=shapes_data['train']['annotation_file']
  )
  assert sum(r.bad_examples for r in wrong) == val['num_images']
  assert (
    'are not in the annotation file (the annotation file of another split?)'
    in (wrong[0].problems[0])
  )
  text = record_check.format_report(wrong)
  assert 'Use the annotation file of the split' in text and 'skip_corrupt' not in text


def test_max_records_and_classification_kind(shapes_data):
  reports = record_check.check_data(
    shapes_data['train']['tfrecord_pattern'], max_records=1, kind='classification'
  )
  assert [r.records for r in reports] == [1, 1]
  assert 'missing feature(s) image/class/label' in reports[0].problems[0]
  with pytest.raises(ValueError, match='kind must be one of'):
    record_check.check_data(shapes_data['train']['tfrecord_pattern'], kind='segmentation')
  assert np.isfinite(record_check.masked_crc32c(b''))


@pytest.mark.slow
def test_check_data_binary(shapes_data, bad_files):
  good = binaries.run_binary(
    'check_data', f'--file_pattern={shapes_data["val"]["tfrecord_pattern"]}', timeout=180
  )
  assert good.returncode == 0, good.stderr[-3000:]
  assert 'All 2 file(s) are fine (4 records read).' in good.stdout
  pattern = f'{shapes_data["val"]["tfrecord_pattern"]},{bad_files["bit_flip"]}'
  bad = binaries.run_binary(
    'check_data',
    f'--file_pattern={pattern}',
    f'--annotation_file={shapes_data["val"]["annotation_file"]}',
    timeout=180,
  )
  assert bad.returncode == 1, bad.stderr[-3000:]
  assert re.search(r'bit_flip.tfrecord +unreadable from record 1 +1 +1\n', bad.stdout), bad.stdout
  # Its record 0 is a training image: not in the validation annotation file.
  assert re.search(r'record 0 \(byte 0\): \d+ of the \d+ box\(es\) of image id', bad.stdout)
  assert '1 of 3 file(s) have problems' in bad.stdout

"""The serving and memory benchmarks' mechanics (never their timings).

Statistics from given call times, the interleaving order, the detection comparison,
the JPEGs, the random weights, the benchmark child protocol on a tiny SavedModel
(each side in its own process, a positive peak RSS), and, slow, both sides' real
exports of one small SpineNet giving detections of the same shapes and scores.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet.workflows import benchmark_child
from official_spinenet.workflows import memory_benchmark
from official_spinenet.workflows import serving_benchmark as sb


def test_latency_stats_from_given_times():
  stats = sb.latency_stats([0.5, 0.1, 0.4, 0.2, 0.3], batch_size=8)
  assert stats.median_seconds == pytest.approx(0.3)
  # numpy's linear interpolation: 0.4 + 0.8 * (0.5 - 0.4).
  assert stats.p95_seconds == pytest.approx(0.48)
  assert stats.images_per_second == pytest.approx(8 / 0.3)
  assert stats.calls == 5
  with pytest.raises(ValueError, match='No call times'):
    sb.latency_stats([], batch_size=1)


class _FakeChild:
  def __init__(self, name, log, seconds):
    self._name, self._log, self._seconds = name, log, seconds

  def request(self, command):
    self._log.append((self._name, command))
    return {'seconds': self._seconds}


def test_interleaved_calls_alternate_sides_and_who_goes_first():
  log = []
  children = {'ours': _FakeChild('ours', log, 1.0), 'model_garden': _FakeChild('mg', log, 2.0)}
  seconds = sb.interleaved_seconds(children, calls=3)
  assert seconds == {'ours': [1.0] * 3, 'model_garden': [2.0] * 3}
  assert [name for name, _ in log] == ['ours', 'mg', 'mg', 'ours', 'ours', 'mg']
  assert {command for _, command in log} == {'call'}


def _detections(scores, counts):
  scores = np.asarray(scores, np.float32)
  return {
    'detection_boxes': np.zeros(scores.shape + (4,)),
    'detection_scores': scores,
    'detection_classes': np.ones(scores.shape, np.int32),
    'num_detections': np.asarray(counts),
  }


def test_compare_detections_shapes_counts_and_score_difference():
  ours = _detections([[0.9, 0.5, 0.0], [0.7, 0.0, 0.0]], [2, 1])
  theirs = _detections([[0.5, 0.8, 0.2], [0.0, 0.0, 0.0]], [3, 0])
  result = sb.compare_detections(ours, theirs)
  assert result['shapes']['detection_boxes'] == ((2, 3, 4), (2, 3, 4))
  assert result['num_detections'] == ([2, 1], [3, 0])
  # Image 0: the first two of each, sorted: |0.5 - 0.5|, |0.9 - 0.8|; image 1: none.
  assert result['max_score_difference'] == pytest.approx(0.1)
  none = sb.compare_detections(_detections([[0.0]], [0]), _detections([[0.0]], [0]))
  assert np.isnan(none['max_score_difference'])


def test_jpegs_are_640x480(tmp_path):
  paths = sb.write_jpegs(str(tmp_path), 2)
  images = [tf.io.decode_jpeg(tf.io.read_file(p)) for p in paths]
  assert [tuple(i.shape) for i in images] == [(480, 640, 3)] * 2
  assert not np.array_equal(images[0], images[1])


def test_random_weights_keep_the_class_prior():
  model = tf_keras.Sequential(
    [tf_keras.layers.Dense(256, input_shape=(512,)), tf_keras.layers.Dense(5, name='scores')]
  )
  sb.randomize_weights(model, seed=1)
  hidden_kernel, hidden_bias, _, class_bias = [w.numpy() for w in model.weights]
  assert np.std(hidden_kernel) == pytest.approx(np.sqrt(2 / 512), rel=0.05)
  assert 0.5 <= hidden_bias.min() and hidden_bias.max() <= 1.5
  np.testing.assert_allclose(class_bias, np.log(0.01 / 0.99), rtol=1e-6)


class _Echo(tf.Module):
  """A tiny stand-in SavedModel: each image's decoded height and width."""

  def __init__(self, input_name):
    super().__init__()
    spec = tf.TensorSpec([None], tf.string, name=input_name)
    self.serve = tf.function(self._serve, input_signature=[spec])

  def _serve(self, encoded):
    sizes = tf.map_fn(
      lambda b: tf.shape(tf.io.decode_jpeg(b))[:2], encoded, fn_output_signature=tf.int32
    )
    return {'sizes': sizes}


@pytest.fixture(scope='module')
def tiny_exports(tmp_path_factory):
  """{side: a tiny SavedModel with that side's signature and input name}, and 2 JPEGs."""
  root = tmp_path_factory.mktemp('tiny_exports')
  dirs = {}
  for side, (signature, input_name) in sb.SIGNATURES.items():
    module = _Echo(input_name)
    dirs[side] = str(root / side)
    tf.saved_model.save(module, dirs[side], signatures={signature: module.serve})
  return dirs, sb.write_jpegs(str(root / 'images'), 2)


def test_serving_children_time_and_return_outputs(tiny_exports):
  dirs, images = tiny_exports
  children = {side: sb.start_server(side, dirs[side], images, warmup=1) for side in sb.SIDES}
  seconds = sb.interleaved_seconds(children, calls=2)
  outputs = {side: child.request('outputs') for side, child in children.items()}
  peaks = {side: child.finish()['peak_rss_mb'] for side, child in children.items()}
  assert all(len(s) == 2 and min(s) > 0 for s in seconds.values())
  assert outputs['ours'] == outputs['model_garden'] == {'sizes': [[480, 640], [480, 640]]}
  assert all(peak > 0 for peak in peaks.values())


def test_memory_children_report_positive_peaks(tiny_exports):
  dirs, images = tiny_exports
  baseline = memory_benchmark.baseline_mb()
  peaks = memory_benchmark.serving_peak_mb(dirs, images, calls=1)
  assert baseline > 0
  # A serving process imported TensorFlow too, and loaded a model besides.
  assert all(peak > 0.5 * baseline for peak in peaks.values())


def test_a_child_that_fails_is_reported():
  child = benchmark_child.Child('serve', export_dir='/nonexistent', signature='s',
                                input_name='x', image_files=[], warmup=1)  # fmt: skip
  with pytest.raises(RuntimeError, match='without replying'):
    child.read_reply()


@pytest.mark.slow
def test_both_exports_give_the_same_detections(tmp_path):
  """Both sides' real exports of SpineNet-49S at 128 px, same weights: same detections.

  Three classes, background included (both sides drop it before NMS): class-aware NMS
  over two classes, more than one as with COCO's 91, at a fraction of the export and
  first-call time of Model Garden's per-class NMS loop, whose graph grows with each class.
  """
  size = sb.ModelSize(image_size=128, model_id='49S', num_classes=3)
  dirs = sb.export_both(str(tmp_path), batch_size=2, size=size)
  assert all(os.path.exists(os.path.join(d, 'saved_model.pb')) for d in dirs.values())
  result = sb.serve_both(dirs, sb.write_jpegs(str(tmp_path / 'images'), 2), calls=1, warmup=1)
  for ours, theirs in result.detections['shapes'].values():
    assert ours == theirs
  assert result.detections['shapes']['detection_boxes'][0] == (2, 100, 4)
  counts_ours, counts_theirs = result.detections['num_detections']
  assert counts_ours == counts_theirs and min(counts_ours) > 0
  assert result.detections['max_score_difference'] < 1e-4
  assert set(result.stats) == set(sb.SIDES) == set(result.peak_rss_mb)

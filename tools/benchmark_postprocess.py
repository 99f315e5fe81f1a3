r"""Times RetinaNet post-processing: ours ('fast') against Model Garden's v1.

Both run on the same head outputs in the same process: RetinaNet-SpineNet-49
(our backbone and head, random weights) at 640x640 with COCO's 91 classes. The
head's predictors are redrawn so that scores and boxes vary over anchors as a
trained model's do, and the classifier bias is set so that about --candidates
(anchor, class) pairs per image score above the threshold. Each version is
warmed up (traced) once, then timed --runs times (median), for each batch
size; the detections are checked to be equal.

Usage, from the repository root:

  python tools/benchmark_postprocess.py
  python tools/benchmark_postprocess.py --batch_sizes=1 --candidates=1000 \
      --reference_runs=3 --runs=20
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tf_keras

try:
  from official_spinenet.modeling import retinanet_model
except ImportError:
  # Run as `python tools/benchmark_postprocess.py` without the package installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from official_spinenet.modeling import retinanet_model  # pylint: disable=g-import-not-at-top
from official_spinenet.modeling.backbones import factory  # pylint: disable=g-import-not-at-top,g-bad-import-order
from official_spinenet.modeling.heads import retinanet_head  # pylint: disable=g-import-not-at-top,g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_integer('image_size', 640, 'Square input size in pixels.')
flags.DEFINE_integer('num_classes', 91, 'Head classes, background included.')
flags.DEFINE_list('batch_sizes', ['1', '4'], 'Batch sizes to time.')
flags.DEFINE_list('candidates', ['1000', '10000'],
                  'Target (class, anchor) pairs per image above the score threshold.')
flags.DEFINE_integer('runs', 20, 'Timed runs of ours (median reported).')
flags.DEFINE_integer('reference_runs', 3, "Timed runs of Model Garden's v1 (median reported).")
flags.DEFINE_float('logit_stddev', 2.0, 'Spread of the class logits over anchors.')
flags.DEFINE_float('box_delta_stddev', 0.2, 'Spread of the box deltas.')
flags.DEFINE_integer('seed', 0, 'Random seed (weights and images).')

MIN_LEVEL, MAX_LEVEL = 3, 7


def _model_outputs(batch_size: int):
  """Head outputs of RetinaNet-SpineNet-49 (random weights) and the model's anchors.

  A freshly initialised head predicts almost constant outputs (its predictor
  kernels are drawn with stddev 1e-5), so every anchor scores alike. The
  predictor kernels are redrawn and scaled so that logits vary with stddev
  --logit_stddev and box deltas with --box_delta_stddev, as a trained model's do.
  """
  tf_keras.utils.set_random_seed(FLAGS.seed)
  size = FLAGS.image_size
  backbone = factory.build_backbone('spinenet', '49', input_specs=[None, size, size, 3])
  head = retinanet_head.RetinaNetHead(min_level=MIN_LEVEL, max_level=MAX_LEVEL,
                                      num_classes=FLAGS.num_classes)
  model = retinanet_model.RetinaNetModel(backbone=backbone, head=head)
  images = tf.random.uniform([batch_size, size, size, 3], -1.0, 1.0, seed=FLAGS.seed)
  forward = tf.function(lambda x: model(x, training=False))
  forward(images[:1])  # builds the head's layers
  predictors = ((head._classifier, 'cls_outputs', FLAGS.logit_stddev),  # pylint: disable=protected-access
                (head._box_regressor, 'box_outputs', FLAGS.box_delta_stddev))  # pylint: disable=protected-access
  for layer, _, _ in predictors:
    layer.kernel.assign(tf.random.normal(layer.kernel.shape, seed=FLAGS.seed))
    layer.bias.assign(tf.zeros_like(layer.bias))
  outputs = forward(images[:1])
  for layer, key, stddev in predictors:
    # The predictor is linear with a zero bias: scaling its kernel scales its outputs.
    measured = np.std(np.concatenate([v.numpy().ravel() for v in outputs[key].values()]))
    layer.kernel.assign(layer.kernel * (stddev / measured))
  start = time.perf_counter()
  outputs = forward(images)
  print(f'model forward (backbone + head), batch {batch_size}: '
        f'{time.perf_counter() - start:.2f} s')
  return outputs, model.anchor_boxes((size, size))


def _with_candidates(outputs, target: int):
  """The outputs with class logits shifted so ~target pairs per image pass the threshold.

  Adding a constant to the logits is setting the classifier's bias to it.
  """
  batch_size = next(iter(outputs['cls_outputs'].values())).shape[0]
  logits = np.concatenate([v.numpy().reshape(batch_size, -1, FLAGS.num_classes)
                           for v in outputs['cls_outputs'].values()], axis=1)
  foreground = logits[..., 1:].ravel()
  threshold = np.float32(np.log(retinanet_model.PRE_NMS_SCORE_THRESHOLD /
                                (1.0 - retinanet_model.PRE_NMS_SCORE_THRESHOLD)))
  shift = np.float32(threshold - np.quantile(foreground, 1.0 - target / foreground.size *
                                             batch_size))
  shifted = {k: v + shift for k, v in outputs['cls_outputs'].items()}
  count = int(np.sum(foreground + shift > threshold)) // batch_size
  return {'cls_outputs': shifted, 'box_outputs': outputs['box_outputs']}, count


def _post_processing(nms_version: str, outputs, anchors, image_shape):
  """generate_detections with one nms_version on fixed inputs, as a graph."""
  return tf.function(lambda: retinanet_model.generate_detections(
      outputs, anchors, image_shape, nms_version=nms_version))


def _timed(fn, runs: int):
  """(median seconds of `runs` calls, the detections) after a warm-up call (tracing)."""
  detections = fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), detections


def _assert_same_detections(reference, ours):
  """Same counts; same scores and classes and (to float32 rounding) boxes, in order."""
  np.testing.assert_array_equal(reference['num_detections'], ours['num_detections'])
  for image, count in enumerate(reference['num_detections'].numpy()):
    for key in ('detection_scores', 'detection_classes'):
      np.testing.assert_array_equal(reference[key][image, :count], ours[key][image, :count],
                                    err_msg=f'{key}, image {image}')
    np.testing.assert_allclose(reference['detection_boxes'][image, :count],
                               ours['detection_boxes'][image, :count], rtol=1e-6, atol=1e-5,
                               err_msg=f'detection_boxes, image {image}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  outputs, anchors = _model_outputs(max(batch_sizes))
  rows = []
  for target in (int(c) for c in FLAGS.candidates):
    shifted, count = _with_candidates(outputs, target)
    for batch_size in batch_sizes:
      batch = tf.nest.map_structure(lambda t, b=batch_size: t[:b], shifted)
      image_shape = tf.fill([batch_size, 2], float(FLAGS.image_size))
      reference, expected = _timed(
          _post_processing('v1', batch, anchors, image_shape), FLAGS.reference_runs)
      ours, actual = _timed(_post_processing('fast', batch, anchors, image_shape), FLAGS.runs)
      _assert_same_detections(expected, actual)
      rows.append((batch_size, count, reference, ours))
      print(f'batch {batch_size}, ~{count} candidates/image: Model Garden v1 '
            f'{reference * 1e3:.0f} ms, ours {ours * 1e3:.1f} ms, '
            f'{reference / ours:.0f}x faster; detections equal', flush=True)
  print(f'\nRetinaNet-SpineNet-49 {FLAGS.image_size}x{FLAGS.image_size}, '
        f'{FLAGS.num_classes} classes, {os.cpu_count()} CPUs, median time per batch:')
  print('| batch | candidates/image | Model Garden v1 | ours (fast) | speed-up |')
  print('|---|---|---|---|---|')
  for batch_size, count, reference, ours in rows:
    print(f'| {batch_size} | {count} | {reference:.2f} s | {ours * 1e3:.1f} ms | '
          f'{reference / ours:.0f}x |')


if __name__ == '__main__':
  app.run(main)

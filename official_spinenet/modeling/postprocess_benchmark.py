"""Times RetinaNet post-processing: ours ('fast') against Model Garden's v1 NMS.

Both run on the same head outputs in the same process: RetinaNet-SpineNet-49 (our
backbone and head, random weights) with COCO's 91 classes. The head's predictors
are redrawn so that scores and boxes vary over anchors as a trained model's do,
and the class logits shifted so that about `candidates` (anchor, class) pairs per
image score above the threshold. Each version is warmed up (traced) once, then
timed (median), and the detections are checked to be equal.

  outputs, anchors = postprocess_benchmark.model_outputs(640, 91, batch_size=4)
  row = postprocess_benchmark.compare(outputs, anchors, 640, 91, candidates=1000,
                                      batch_size=1, runs=20, reference_runs=3)
"""

import dataclasses
import time
from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.utils import timing

MIN_LEVEL, MAX_LEVEL = 3, 7


@dataclasses.dataclass
class Comparison:
  """One timing of both versions (seconds per batch, medians)."""

  batch_size: int
  candidates: int  # measured (anchor, class) pairs per image above the threshold
  reference_seconds: float
  ours_seconds: float


def model_outputs(
  image_size: int,
  num_classes: int,
  batch_size: int,
  seed: int = 0,
  logit_stddev: float = 2.0,
  box_delta_stddev: float = 0.2,
) -> Tuple[Dict[str, Any], Dict[str, tf.Tensor]]:
  """Head outputs of RetinaNet-SpineNet-49 (random weights) and the model's anchors.

  A freshly initialised head predicts almost constant outputs (its predictor
  kernels are drawn with stddev 1e-5), so every anchor scores alike. The predictor
  kernels are redrawn and scaled so that logits vary with stddev `logit_stddev` and
  box deltas with `box_delta_stddev`, as a trained model's do.

  Returns:
    ({'cls_outputs': {level: [B, H_l, W_l, A * num_classes]}, 'box_outputs': ...},
    the anchor boxes per level).
  """
  tf_keras.utils.set_random_seed(seed)
  backbone = factory.build_backbone('spinenet', '49', input_specs=[None, image_size, image_size, 3])
  head = retinanet_head.RetinaNetHead(
    min_level=MIN_LEVEL, max_level=MAX_LEVEL, num_classes=num_classes
  )
  model = retinanet_model.RetinaNetModel(backbone=backbone, head=head)
  images = tf.random.uniform([batch_size, image_size, image_size, 3], -1.0, 1.0, seed=seed)
  forward = tf.function(lambda x: model(x, training=False))
  forward(images[:1])  # builds the head's layers
  predictors = (
    (head._classifier, 'cls_outputs', logit_stddev),  # pylint: disable=protected-access
    (head._box_regressor, 'box_outputs', box_delta_stddev),
  )  # pylint: disable=protected-access
  for layer, _, _ in predictors:
    layer.kernel.assign(tf.random.normal(layer.kernel.shape, seed=seed))
    layer.bias.assign(tf.zeros_like(layer.bias))
  outputs = forward(images[:1])
  for layer, key, stddev in predictors:
    # The predictor is linear with a zero bias: scaling its kernel scales its outputs.
    measured = np.std(np.concatenate([v.numpy().ravel() for v in outputs[key].values()]))
    layer.kernel.assign(layer.kernel * (stddev / measured))
  start = time.perf_counter()
  outputs = forward(images)
  print(f'model forward (backbone + head), batch {batch_size}: {time.perf_counter() - start:.2f} s')
  return outputs, model.anchor_boxes((image_size, image_size))


def with_candidates(
  outputs: Dict[str, Any], num_classes: int, target: int
) -> Tuple[Dict[str, Any], int]:
  """The outputs with class logits shifted so ~target pairs per image pass the threshold.

  Adding a constant to the logits is setting the classifier's bias to it.

  Returns:
    (the shifted outputs, the measured pairs per image above the threshold).
  """
  batch_size = next(iter(outputs['cls_outputs'].values())).shape[0]
  logits = np.concatenate(
    [v.numpy().reshape(batch_size, -1, num_classes) for v in outputs['cls_outputs'].values()],
    axis=1,
  )
  foreground = logits[..., 1:].ravel()
  threshold = np.float32(
    np.log(
      retinanet_model.PRE_NMS_SCORE_THRESHOLD / (1.0 - retinanet_model.PRE_NMS_SCORE_THRESHOLD)
    )
  )
  shift = np.float32(
    threshold - np.quantile(foreground, 1.0 - target / foreground.size * batch_size)
  )
  shifted = {k: v + shift for k, v in outputs['cls_outputs'].items()}
  count = int(np.sum(foreground + shift > threshold)) // batch_size
  return {'cls_outputs': shifted, 'box_outputs': outputs['box_outputs']}, count


def _post_processing(nms_version: str, outputs, anchors, image_shape):
  """generate_detections with one nms_version on fixed inputs, as a graph."""
  return tf.function(
    lambda: retinanet_model.generate_detections(
      outputs, anchors, image_shape, nms_version=nms_version
    )
  )


def assert_same_detections(reference: Dict[str, Any], ours: Dict[str, Any]) -> None:
  """Same counts; same scores and classes and (to float32 rounding) boxes, in order."""
  np.testing.assert_array_equal(reference['num_detections'], ours['num_detections'])
  for image, count in enumerate(reference['num_detections'].numpy()):
    for key in ('detection_scores', 'detection_classes'):
      np.testing.assert_array_equal(
        reference[key][image, :count], ours[key][image, :count], err_msg=f'{key}, image {image}'
      )
    np.testing.assert_allclose(
      reference['detection_boxes'][image, :count],
      ours['detection_boxes'][image, :count],
      rtol=1e-6,
      atol=1e-5,
      err_msg=f'detection_boxes, image {image}',
    )


def compare(
  outputs: Dict[str, Any],
  anchors: Dict[str, tf.Tensor],
  image_size: int,
  num_classes: int,
  candidates: int,
  batch_size: int,
  runs: int,
  reference_runs: int,
) -> Comparison:
  """Times both versions on the first `batch_size` images; checks equal detections."""
  shifted, count = with_candidates(outputs, num_classes, candidates)
  batch = tf.nest.map_structure(lambda t: t[:batch_size], shifted)
  image_shape = tf.fill([batch_size, 2], float(image_size))
  seconds = {}
  detections = {}
  for version, num_runs in (('v1', reference_runs), ('fast', runs)):
    times, detections[version] = timing.time_calls(
      _post_processing(version, batch, anchors, image_shape), num_runs, warmup=1
    )
    seconds[version] = float(np.median(times))
  assert_same_detections(detections['v1'], detections['fast'])
  return Comparison(batch_size, count, seconds['v1'], seconds['fast'])

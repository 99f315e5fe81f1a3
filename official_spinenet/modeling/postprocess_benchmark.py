"""Times RetinaNet post-processing: ours ('fast') against the forward pass and Model Garden.

All run in the same process on the same head outputs: RetinaNet-SpineNet-49 (our
backbone and head, random weights) with COCO's 91 classes. The head's predictors
are redrawn so that scores and boxes vary over anchors as a trained model's do,
and the class logits shifted so that about `candidates` (anchor, class) pairs per
image score above the threshold.

Every timed function is a `tf.function` whose inputs (images, head outputs,
anchors, image sizes) are fed as arguments: a function that captured them would
hold them as constants, which grappler may fold at trace time, and then it would
time what is left. Each is traced once, then the versions are timed in
interleaved rounds (forward, ours, Model Garden v1, v2, again and again) so that a
busy machine slows them alike; medians are reported. Ours must give v1's
detections (checked); v2's are not v1's (its own top-k order) and are only timed.

  setup = postprocess_benchmark.build(640, 91, batch_size=4)
  row = postprocess_benchmark.compare(setup, 91, candidates=1000, batch_size=1,
                                      runs=20, reference_runs=3, forward_runs=5)
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.utils import tables
from official_spinenet.utils import timing

MIN_LEVEL, MAX_LEVEL = 3, 7
VERSIONS = ('forward', 'fast', 'v1', 'v2')  # what `compare` times, in each round's order


@dataclasses.dataclass
class Setup:
  """A built model's forward pass, its inputs and outputs, and its anchors."""

  forward: Callable[[tf.Tensor], Dict[str, Any]]  # tf.function: images -> head outputs
  images: tf.Tensor  # [B, size, size, 3]
  outputs: Dict[str, Any]  # forward(images)
  anchors: Dict[str, tf.Tensor]  # level -> [H_l, W_l, 4 * A]
  image_size: int


@dataclasses.dataclass
class Comparison:
  """One timing of every version (seconds per batch, medians of interleaved runs)."""

  batch_size: int
  candidates: int  # measured (anchor, class) pairs per image above the threshold
  forward_seconds: float  # backbone + head
  ours_seconds: float
  v1_seconds: float
  v2_seconds: float


def build(
  image_size: int,
  num_classes: int,
  batch_size: int,
  seed: int = 0,
  logit_stddev: float = 2.0,
  box_delta_stddev: float = 0.2,
) -> Setup:
  """RetinaNet-SpineNet-49 (random weights), its head outputs on random images, anchors.

  A freshly initialised head predicts almost constant outputs (its predictor
  kernels are drawn with stddev 1e-5), so every anchor scores alike. The predictor
  kernels are redrawn and scaled so that logits vary with stddev `logit_stddev` and
  box deltas with `box_delta_stddev`, as a trained model's do.
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
  return Setup(
    forward, images, forward(images), model.anchor_boxes((image_size, image_size)), image_size
  )


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


def post_processing(nms_version: str) -> Callable[..., Dict[str, tf.Tensor]]:
  """generate_detections with one nms_version as a graph of (outputs, anchors, image_shape)."""
  return tf.function(
    lambda outputs, anchors, image_shape: retinanet_model.generate_detections(
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


def interleaved_medians(
  calls: Mapping[str, Callable[[], Any]], runs: Mapping[str, int]
) -> Tuple[Dict[str, float], Dict[str, Any]]:
  """Calls each once untimed, then in rounds each in turn until it has had its runs.

  Returns:
    (name -> median seconds, name -> outputs of its last call).
  """
  times: Dict[str, List[float]] = {name: [] for name in calls}
  results = {}
  for name, call in calls.items():
    results[name] = call()
    timing.block_until_ready(results[name])
  for round_index in range(max(runs.values())):
    for name, call in calls.items():
      if round_index < runs[name]:
        start = time.perf_counter()
        results[name] = call()
        timing.block_until_ready(results[name])
        times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}, results


def compare(
  setup: Setup,
  num_classes: int,
  candidates: int,
  batch_size: int,
  runs: int,
  reference_runs: int,
  forward_runs: int,
) -> Comparison:
  """Times every version on the first `batch_size` images; checks ours gives v1's detections.

  Args:
    runs, reference_runs, forward_runs: timed calls of ours, of each Model Garden
      version, of the forward pass.
  """
  shifted, count = with_candidates(setup.outputs, num_classes, candidates)
  batch = tf.nest.map_structure(lambda t: t[:batch_size], shifted)
  images = setup.images[:batch_size]
  image_shape = tf.fill([batch_size, 2], float(setup.image_size))
  functions = {version: post_processing(version) for version in VERSIONS[1:]}
  calls = {'forward': lambda: setup.forward(images)}
  for version, function in functions.items():
    calls[version] = functools.partial(function, batch, setup.anchors, image_shape)
  seconds, results = interleaved_medians(
    calls, {'forward': forward_runs, 'fast': runs, 'v1': reference_runs, 'v2': reference_runs}
  )
  assert_same_detections(results['v1'], results['fast'])
  return Comparison(
    batch_size, count, seconds['forward'], seconds['fast'], seconds['v1'], seconds['v2']
  )


def describe(r: Comparison) -> str:
  """One line: the absolute times and ours as a share of the forward pass."""
  return (
    f'batch {r.batch_size}, ~{r.candidates} candidates/image: forward '
    f'{r.forward_seconds:.2f} s, ours {r.ours_seconds * 1e3:.1f} ms '
    f'({100 * r.ours_seconds / r.forward_seconds:.1f}% of it), Model Garden v1 '
    f"{r.v1_seconds:.2f} s, v2 {r.v2_seconds:.2f} s; ours gives v1's detections"
  )


def markdown_table(comparisons: Sequence[Comparison]) -> str:
  """Absolute times, ours / forward, and Model Garden's times over ours, one row each."""
  rows = [
    (
      r.batch_size,
      r.candidates,
      f'{r.forward_seconds:.2f} s',
      f'{r.ours_seconds * 1e3:.1f} ms',
      f'{100 * r.ours_seconds / r.forward_seconds:.1f}%',
      f'{r.v1_seconds:.2f} s',
      f'{r.v1_seconds / r.ours_seconds:.0f}x',
      f'{r.v2_seconds:.2f} s',
      f'{r.v2_seconds / r.ours_seconds:.0f}x',
    )
    for r in comparisons
  ]
  header = ('batch', 'candidates/image', 'forward', 'ours', 'ours / forward')
  header += ('MG v1', 'v1 / ours', 'MG v2', 'v2 / ours')
  return tables.format_table(header, rows, markdown=True, left_columns=0)

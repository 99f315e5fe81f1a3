"""Times RetinaNet post-processing: ours ('fast') against the forward pass and Model Garden.

All run in the same process on the same head outputs: RetinaNet-SpineNet-49 (our
backbone and head, random weights) with COCO's 91 classes. The head's predictors
are redrawn so that scores and boxes vary over anchors as a trained model's do,
and the class logits shifted so that about `candidates` (anchor, class) pairs per
image score above the threshold.

Every timed function is a `tf.function` whose inputs (images, head outputs,
anchors, image sizes) are fed as arguments: a function that captured them would
hold them as constants, which grappler may fold at trace time, and then it would
time what is left. Ours is timed three ways, as users call it: in a
tf.function ('fast'), eagerly (`RetinaNetModel.detections_from_outputs` on eager
tensors, anchors included), and from a SavedModel (a function saved and loaded
again, anchors constants of its graph as in our exports). Each is called once
untimed, then the versions are timed in interleaved rounds (forward, ours three
ways, Model Garden v1, v2, again and again) so that a busy machine slows them
alike; medians are reported. Ours must give v1's detections each way (checked);
v2's are not v1's (its own top-k order) and are only timed.

  setup = postprocess_benchmark.build(640, 91, batch_size=4)
  row = postprocess_benchmark.compare(setup, 91, candidates=1000, batch_size=1,
                                      runs=20, reference_runs=3, forward_runs=5)
"""

import dataclasses
import functools
import tempfile
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.serving import postprocessing
from official_spinenet.utils import tables
from official_spinenet.utils import timing

MIN_LEVEL, MAX_LEVEL = 3, 7
# What `compare` times, in each round's order.
VERSIONS = ('forward', 'fast', 'eager', 'saved_model', 'v1', 'v2')


@dataclasses.dataclass
class Setup:
  """A built model's forward pass, its inputs and outputs, and its anchors."""

  model: retinanet_model.RetinaNetModel
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
  ours_seconds: float  # in a tf.function
  eager_seconds: float  # detections_from_outputs called eagerly
  saved_model_seconds: float  # a loaded SavedModel's function
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
  anchors = model.anchor_boxes((image_size, image_size))
  return Setup(model, forward, images, forward(images), anchors, image_size)


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


def saved_post_processing(
  setup: Setup, outputs: Dict[str, Any], export_dir: str
) -> Callable[..., Dict[str, tf.Tensor]]:
  """Our exports' post-processing saved as a function of (outputs, image_shape), loaded.

  As in `serving/export_lib.py`: the anchors are constants of the graph and
  `postprocessing.detections_per_image` detects one image at a time.
  """
  module = tf.Module()
  anchors = {level: tf.constant(boxes) for level, boxes in setup.anchors.items()}
  specs = tf.nest.map_structure(lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), outputs)

  @tf.function(input_signature=[specs, tf.TensorSpec([None, 2], tf.float32)])
  def post_process(head_outputs, image_shape):
    return postprocessing.detections_per_image(
      head_outputs, anchors, image_shape, retinanet_model.MAX_NUM_DETECTIONS
    )

  module.post_process = post_process
  tf.saved_model.save(module, export_dir)
  return tf.saved_model.load(export_dir).post_process


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
  with tempfile.TemporaryDirectory() as export_dir:
    saved = saved_post_processing(setup, batch, export_dir)
    calls = {
      'forward': lambda: setup.forward(images),
      'fast': functools.partial(post_processing('fast'), batch, setup.anchors, image_shape),
      'eager': lambda: setup.model.detections_from_outputs(batch, images, image_shape),
      'saved_model': lambda: saved(batch, image_shape),
    }
    for version in ('v1', 'v2'):
      calls[version] = functools.partial(
        post_processing(version), batch, setup.anchors, image_shape
      )
    seconds, results = timing.interleaved_medians(
      calls,
      {'forward': forward_runs, 'v1': reference_runs, 'v2': reference_runs}
      | {version: runs for version in ('fast', 'eager', 'saved_model')},
    )
  for version in ('fast', 'eager', 'saved_model'):
    assert_same_detections(results['v1'], results[version])
  return Comparison(batch_size, count, *(seconds[version] for version in VERSIONS))


def describe(r: Comparison) -> str:
  """One line: the absolute times and ours as a share of the forward pass."""
  return (
    f'batch {r.batch_size}, ~{r.candidates} candidates/image: forward '
    f'{r.forward_seconds:.2f} s, ours {r.ours_seconds * 1e3:.1f} ms '
    f'({100 * r.ours_seconds / r.forward_seconds:.1f}% of it; eager '
    f'{100 * r.eager_seconds / r.forward_seconds:.1f}%, SavedModel '
    f'{100 * r.saved_model_seconds / r.forward_seconds:.1f}%), Model Garden v1 '
    f"{r.v1_seconds:.2f} s, v2 {r.v2_seconds:.2f} s; ours gives v1's detections each way"
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
      f'{100 * r.eager_seconds / r.forward_seconds:.1f}%',
      f'{100 * r.saved_model_seconds / r.forward_seconds:.1f}%',
      f'{r.v1_seconds:.2f} s',
      f'{r.v1_seconds / r.ours_seconds:.0f}x',
      f'{r.v2_seconds:.2f} s',
      f'{r.v2_seconds / r.ours_seconds:.0f}x',
    )
    for r in comparisons
  ]
  header = ('batch', 'candidates/image', 'forward', 'ours', 'ours / forward')
  header += ('eager / forward', 'SavedModel / forward')
  header += ('MG v1', 'v1 / ours', 'MG v2', 'v2 / ours')
  return tables.format_table(header, rows, markdown=True, left_columns=0)

"""Helpers the export, serving, predict, TFLite and anytime tests share.

Tiny models, test images, the in-process reference detections, and checkpoints of
the tiny test config.
`build_tiny_model` is a tiny SpineNet-49 RetinaNet built in code; `make_checkpoint`
builds a gin config's model (by default gin_configs/testing/retinanet_tiny.gin), gives
it detector-like predictor weights (`scale_predictors`) and saves a training-style
checkpoint. `MASKRCNN_TINY` and `scale_maskrcnn_predictors` do the same for the tiny
Mask R-CNN; `maskrcnn_reference` is its in-process reference; `FakeServing` stands in
for TF Serving.
"""

import base64
import io
import json
import struct
import zlib

import numpy as np
from PIL import Image
import tensorflow as tf
import tf_keras

from official_spinenet import configurables
from official_spinenet.data import shapes
from official_spinenet.modeling import maskrcnn_model
from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.serving import preprocessing

INPUT_SIZE = 128
NUM_CLASSES = shapes.NUM_CLASSES_WITH_BACKGROUND
NMS_SETTINGS = dict(
  score_threshold=0.05, max_detections=100, nms_iou_threshold=0.5, pre_nms_top_k=1000
)
# (height, width) of the test images: landscape, portrait, larger than the input.
IMAGE_SIZES = ((96, 128), (128, 80), (150, 200))
ATOL = 1e-4

# The tiny gin config (128 px) and its evaluation NMS settings.
TINY = 'testing/retinanet_tiny.gin'
MASKRCNN_TINY = 'testing/maskrcnn_tiny.gin'
NAMES = [c['name'] for c in shapes.CATEGORIES]
SETTINGS = dict(score_threshold=0.05, max_detections=100, nms_iou_threshold=0.5, pre_nms_top_k=5000)


def build_unbuilt_model() -> retinanet_model.RetinaNetModel:
  """The tiny architecture, never called: not built, the head has no variables yet."""
  backbone = factory.build_backbone(
    'spinenet',
    '49',
    input_specs=[None, INPUT_SIZE, INPUT_SIZE, 3],
    filter_size_scale=0.25,
    endpoints_num_filters=32,
  )
  head = retinanet_head.RetinaNetHead(
    min_level=3, max_level=7, num_classes=NUM_CLASSES, num_convs=1, num_filters=32
  )
  return retinanet_model.RetinaNetModel(backbone=backbone, head=head)


def build_tiny_model(seed: int = 0) -> retinanet_model.RetinaNetModel:
  """SpineNet-49 (x0.25, 32-filter endpoints) + a 1-conv 32-filter head, 128 px input.

  The predictors are re-drawn with large weights: at initialisation every score is
  ~0.01 (the focal-loss prior) and all boxes are the anchors, so NMS would keep
  near-ties and nothing would pass a realistic threshold.
  """
  tf_keras.utils.set_random_seed(seed)
  model = build_unbuilt_model()
  model(tf.zeros([1, INPUT_SIZE, INPUT_SIZE, 3]))
  rng = np.random.RandomState(seed)
  head = model.head
  # pylint: disable=protected-access
  head._classifier.kernel.assign(rng.normal(0, 2.0, head._classifier.kernel.shape))
  head._classifier.bias.assign(np.full(head._classifier.bias.shape, -4.0))
  head._box_regressor.kernel.assign(rng.normal(0, 0.02, head._box_regressor.kernel.shape))
  # pylint: enable=protected-access
  return model


def sample_images(sizes=IMAGE_SIZES, seed: int = 0):
  """Synthetic shapes images (uint8 [H, W, 3]) of the given sizes."""
  rng = np.random.default_rng(seed)
  return [shapes.render_shapes_image(rng, h, w)[0] for h, w in sizes]


def encode(image: np.ndarray, image_format: str = 'PNG') -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=image_format)
  return buffer.getvalue()


def zero_width_png() -> bytes:
  """A PNG whose (valid-CRC) header says width 0, height 5."""

  def chunk(kind, data):
    return (
      struct.pack('>I', len(data))
      + kind
      + data
      + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  header = struct.pack('>IIBBBBB', 0, 5, 8, 2, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(b''))
    + chunk(b'IEND', b'')
  )


def decode(encoded: bytes) -> np.ndarray:
  """The decoder the training data goes through (TfExampleDecoder: decode_image)."""
  return tf.io.decode_image(encoded, channels=3).numpy()


def _preprocess(images):
  """The serving preprocessing of uint8 images: (batch [B, 128, 128, 3], image_info)."""
  processed = [
    preprocessing.preprocess_image(
      tf.constant(image), (INPUT_SIZE, INPUT_SIZE), [INPUT_SIZE, INPUT_SIZE]
    )
    for image in images
  ]
  return tf.stack([p[0] for p in processed]), tf.stack([p[1] for p in processed]).numpy()


def _boxes_to_original(boxes: np.ndarray, image_info: np.ndarray) -> np.ndarray:
  """Model-input boxes [B, N, 4] -> original pixels, in numpy (independent of the graph's)."""
  scale = np.tile(image_info[:, 2], 2)[:, None, :]
  offset = np.tile(image_info[:, 3], 2)[:, None, :]
  size = np.tile(image_info[:, 0], 2)[:, None, :]
  return np.clip((boxes + offset) / scale, 0.0, size)


def reference_detections(model, images, **settings):
  """The in-process model: same preprocessing, model.detect, boxes to original pixels."""
  batch, image_info = _preprocess(images)
  detections = model.detect(
    batch,
    image_shape=image_info[:, 1, :],
    anchor_boxes=model.anchor_boxes((INPUT_SIZE, INPUT_SIZE)),
    pre_nms_score_threshold=settings['score_threshold'],
    max_num_detections=settings['max_detections'],
    nms_iou_threshold=settings['nms_iou_threshold'],
    pre_nms_top_k=settings['pre_nms_top_k'],
  )
  return {
    'detection_boxes': _boxes_to_original(detections['detection_boxes'].numpy(), image_info),
    'detection_scores': detections['detection_scores'].numpy(),
    'detection_classes': detections['detection_classes'].numpy(),
    'num_detections': detections['num_detections'].numpy(),
    'image_info': image_info,
    'raw_outputs': {k: detections[k] for k in ('cls_outputs', 'box_outputs')},
  }


def maskrcnn_reference(model, images):
  """The in-process Mask R-CNN on the serving preprocessing; boxes to original pixels.

  Returns:
    numpy detection_boxes (original pixels), detection_scores, detection_classes,
    num_detections, detection_masks [B, N, 28, 28] (crop masks), image_info.
  """
  batch, image_info = _preprocess(images)
  outputs = model(batch, image_shape=image_info[:, 1, :], training=False)
  detections = {
    k: v.numpy() for k, v in maskrcnn_model.inference_outputs(outputs, include_mask=True).items()
  }
  detections['detection_boxes'] = _boxes_to_original(detections['detection_boxes'], image_info)
  detections['image_info'] = image_info
  return detections


def scale_maskrcnn_predictors(model, factor: float = 100.0) -> None:
  """Sharpens a fresh Mask R-CNN's class and mask predictors (kernels x factor).

  At initialisation every class score is ~1 / num_classes and most mask
  probabilities are within 0.02 of 0.5, so scores tie and pasted masks flip with
  rounding; x100 spreads both (97 of 100 distinct scores, ~1% of mask cells near
  0.5 on the sample images) without touching the rest of the model.
  """
  # pylint: disable=protected-access
  for layer in (model.detection_head[-1]._classifier, model.mask_head._mask_regressor):
    layer.kernel.assign(layer.kernel * factor)
  # pylint: enable=protected-access


def assert_same_detections(test, actual, expected, atol=ATOL):
  """Equal per image up to the order of detections whose scores tie within atol.

  Returns:
    Per image, the index in `expected` of each of the first num_detections of
    `actual`, in order (to compare what else they carry, e.g. masks).
  """
  actual = {k: np.asarray(v) for k, v in actual.items()}
  test.assertAllEqual(actual['num_detections'], expected['num_detections'])
  test.assertAllClose(actual['image_info'], expected['image_info'], atol=atol)
  matches = []
  for i, count in enumerate(expected['num_detections']):
    got = np.concatenate(
      [
        actual['detection_boxes'][i, :count],
        actual['detection_scores'][i, :count, None],
        actual['detection_classes'][i, :count, None],
      ],
      axis=1,
    )
    want = np.concatenate(
      [
        expected['detection_boxes'][i, :count],
        expected['detection_scores'][i, :count, None],
        expected['detection_classes'][i, :count, None],
      ],
      axis=1,
    )
    test.assertAllClose(np.sort(got[:, 4]), np.sort(want[:, 4]), atol=atol)
    unmatched = list(range(count))
    matches.append([])
    for row in got:
      match = next((j for j in unmatched if np.allclose(row, want[j], atol=atol)), None)
      test.assertIsNotNone(
        match, f'image {i}: served detection {row} not in the in-process detections'
      )
      unmatched.remove(match)
      matches[-1].append(match)
    # Padding past num_detections is zero.
    test.assertAllEqual(
      actual['detection_scores'][i, count:], np.zeros_like(actual['detection_scores'][i, count:])
    )
  return matches


def _flat(outputs) -> np.ndarray:
  return np.concatenate([np.reshape(outputs[k].numpy(), [-1]) for k in sorted(outputs, key=int)])


def scale_predictors(
  model,
  images=None,
  input_size=(128, 128),
  logit_std=2.0,
  logit_mean=-4.0,
  max_logit=6.0,
  box_std=0.1,
) -> None:
  """Rescales a fresh RetinaNet's predictors so that it detects things, like a detector.

  At initialisation every score is the focal-loss prior (~0.01) and every box an
  anchor (the predictors' weights are ~1e-5), so nothing passes a realistic
  threshold. The class predictor's kernel and bias are set so that the logits on
  `images` have mean logit_mean and std logit_std (a few percent of the scores above
  0.05) but stay below max_logit (no saturated scores of 1.0 that tie), the box
  predictor's kernel so that the deltas have std box_std. Only the last layers change,
  so the model stays as well-conditioned numerically as it was built.

  Args:
    model: a built RetinaNetModel.
    images: uint8 [H, W, 3] arrays (default: sample_images()).
    input_size: the model input (height, width).
  """
  images = sample_images() if images is None else images
  batch = tf.stack(
    [
      preprocessing.preprocess_image(tf.constant(i), input_size, list(input_size))[0]
      for i in images
    ]
  )
  outputs = model(batch, training=False)
  head = model.head
  # pylint: disable=protected-access
  for layer, key, std, mean, cap in (
    (head._classifier, 'cls_outputs', logit_std, logit_mean, max_logit),
    (head._box_regressor, 'box_outputs', box_std, 0.0, None),
  ):
    bias = next(w for w in layer.weights if 'bias' in w.name)
    kernel = next(w for w in layer.weights if 'kernel' in w.name and 'depthwise' not in w.name)
    values = _flat(outputs[key])
    raw = values - np.tile(bias.numpy(), values.size // bias.shape[0])
    scale = std / np.std(raw)
    if cap is not None:
      scale = min(scale, (cap - mean) / (np.max(raw) - np.mean(raw)))
    kernel.assign(kernel.numpy() * scale)
    bias.assign(np.full(bias.shape, mean - scale * np.mean(raw)))
  # pylint: enable=protected-access


def make_checkpoint(model_dir, gin_files=(TINY,), gin_params=(), prepare=scale_predictors, step=2):
  """Builds the gin config's model, `prepare(model)`s it, saves `model_dir/ckpt-<step>`.

  Returns:
    (model, checkpoint prefix).
  """
  configurables.parse_gin(list(gin_files), list(gin_params))
  task = configurables.build_experiment()['task']
  tf_keras.utils.set_random_seed(0)
  model = task.build_model()
  prepare(model)
  checkpoint = tf.train.Checkpoint(**task.checkpoint_items(model))
  manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=1)
  return model, manager.save(checkpoint_number=step)


class FakeServing:
  """Feeds requests to a loaded SavedModel as TF Serving would.

  Each REST JSON body or gRPC PredictRequest becomes tensors the way TF Serving makes
  them (b64 strings decoded, values typed by the signature's input dtype); the
  signature name, input names, dtypes and shapes are checked against the loaded
  SavedModel's signature (with `test`'s assertions), and the reply is in TF Serving's
  formats.
  """

  def __init__(self, test, loaded):
    self._test = test
    self._loaded = loaded

  def _call(self, signature_name, tensors):
    test = self._test
    test.assertIn(signature_name, self._loaded.signatures)
    function = self._loaded.signatures[signature_name]
    specs = function.structured_input_signature[1]
    test.assertCountEqual(tensors, specs)
    for name, tensor in tensors.items():
      test.assertEqual(tensor.dtype, specs[name].dtype, name)
      test.assertTrue(
        specs[name].shape.is_compatible_with(tensor.shape),
        f'{name}: {tensor.shape} vs {specs[name].shape}',
      )
    return {k: v.numpy() for k, v in function(**tensors).items()}

  def _typed(self, signature_name, name, values):
    spec = self._loaded.signatures[signature_name].structured_input_signature[1][name]
    if spec.dtype == tf.string:
      values = [base64.b64decode(v['b64']) for v in values]
    return tf.constant(values, dtype=spec.dtype)

  def rest(self, body: str) -> str:
    """A REST :predict body -> reply body (row format in, row format out; same for columns)."""
    payload = json.loads(body)
    signature_name = payload.get('signature_name', 'serving_default')
    if 'inputs' in payload:
      tensors = {
        name: self._typed(signature_name, name, values)
        for name, values in payload['inputs'].items()
      }
      outputs = self._call(signature_name, tensors)
      return json.dumps({'outputs': {k: v.tolist() for k, v in outputs.items()}})
    names = payload['instances'][0].keys()
    tensors = {
      name: self._typed(signature_name, name, [row[name] for row in payload['instances']])
      for name in names
    }
    outputs = self._call(signature_name, tensors)
    count = len(payload['instances'])
    return json.dumps(
      {'predictions': [{k: v[i].tolist() for k, v in outputs.items()} for i in range(count)]}
    )

  def grpc(self, request):
    """A tensorflow_serving PredictRequest -> PredictResponse."""
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top

    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    tensors = {
      name: tf.constant(tf.make_ndarray(proto), dtype=tf.as_dtype(proto.dtype))
      for name, proto in request.inputs.items()
    }
    outputs = self._call(request.model_spec.signature_name, tensors)
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
      response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    return predict_pb2.PredictResponse.FromString(response.SerializeToString())

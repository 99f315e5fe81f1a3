"""SavedModel export: signatures equal the in-process model, bad input, saved_model_cli.

One tiny SpineNet-49 RetinaNet is exported once per test class; its random predictor
weights are re-drawn large so that it detects things at the export's score threshold.
"""
import io
import os
import struct
import subprocess
import sys
import tempfile
from unittest import mock
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet.data import shapes
from official_spinenet.data import tfexample
from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.serving import export_lib
from official_spinenet.serving import postprocessing
from official_spinenet.serving import preprocessing

INPUT_SIZE = 128
NUM_CLASSES = shapes.NUM_CLASSES_WITH_BACKGROUND
NMS_SETTINGS = dict(score_threshold=0.05, max_detections=100, nms_iou_threshold=0.5,
                    pre_nms_top_k=1000)
MAX_IMAGE_PIXELS = 300 * 400
# (height, width) of the test images: landscape, portrait, larger than the input.
IMAGE_SIZES = ((96, 128), (128, 80), (150, 200))
ATOL = 1e-4


def build_unbuilt_model() -> retinanet_model.RetinaNetModel:
  """The tiny architecture, never called: not built, the head has no variables yet."""
  backbone = factory.build_backbone(
      'spinenet', '49', input_specs=[None, INPUT_SIZE, INPUT_SIZE, 3],
      filter_size_scale=0.25, endpoints_num_filters=32)
  head = retinanet_head.RetinaNetHead(min_level=3, max_level=7, num_classes=NUM_CLASSES,
                                      num_convs=1, num_filters=32)
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


def decode(encoded: bytes) -> np.ndarray:
  """The decoder the training data goes through (TfExampleDecoder: decode_image)."""
  return tf.io.decode_image(encoded, channels=3).numpy()


def reference_detections(model, images, **settings):
  """The in-process model: same preprocessing, model.detect, boxes to original pixels."""
  processed = [preprocessing.preprocess_image(tf.constant(image), (INPUT_SIZE, INPUT_SIZE),
                                              [INPUT_SIZE, INPUT_SIZE]) for image in images]
  batch = tf.stack([p[0] for p in processed])
  image_info = tf.stack([p[1] for p in processed]).numpy()
  detections = model.detect(
      batch, image_shape=image_info[:, 1, :],
      anchor_boxes=model.anchor_boxes((INPUT_SIZE, INPUT_SIZE)),
      pre_nms_score_threshold=settings['score_threshold'],
      max_num_detections=settings['max_detections'],
      nms_iou_threshold=settings['nms_iou_threshold'],
      pre_nms_top_k=settings['pre_nms_top_k'])
  scale = np.tile(image_info[:, 2], 2)[:, None, :]
  offset = np.tile(image_info[:, 3], 2)[:, None, :]
  size = np.tile(image_info[:, 0], 2)[:, None, :]
  boxes = np.clip((detections['detection_boxes'].numpy() + offset) / scale, 0.0, size)
  return {'detection_boxes': boxes,
          'detection_scores': detections['detection_scores'].numpy(),
          'detection_classes': detections['detection_classes'].numpy(),
          'num_detections': detections['num_detections'].numpy(),
          'image_info': image_info,
          'raw_outputs': {k: detections[k] for k in ('cls_outputs', 'box_outputs')}}


def assert_same_detections(test, actual, expected, atol=ATOL):
  """Equal per image up to the order of detections whose scores tie within atol."""
  actual = {k: np.asarray(v) for k, v in actual.items()}
  test.assertAllEqual(actual['num_detections'], expected['num_detections'])
  test.assertAllClose(actual['image_info'], expected['image_info'], atol=atol)
  for i, count in enumerate(expected['num_detections']):
    got = np.concatenate([actual['detection_boxes'][i, :count],
                          actual['detection_scores'][i, :count, None],
                          actual['detection_classes'][i, :count, None]], axis=1)
    want = np.concatenate([expected['detection_boxes'][i, :count],
                           expected['detection_scores'][i, :count, None],
                           expected['detection_classes'][i, :count, None]], axis=1)
    test.assertAllClose(np.sort(got[:, 4]), np.sort(want[:, 4]), atol=atol)
    unmatched = list(range(count))
    for row in got:
      match = next((j for j in unmatched if np.allclose(row, want[j], atol=atol)), None)
      test.assertIsNotNone(match, f'image {i}: served detection {row} not in the '
                                  'in-process detections')
      unmatched.remove(match)
    # Padding past num_detections is zero.
    test.assertAllEqual(actual['detection_scores'][i, count:],
                        np.zeros_like(actual['detection_scores'][i, count:]))


def zero_width_png() -> bytes:
  """A PNG whose (valid-CRC) header says width 0, height 5."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  header = struct.pack('>IIBBBBB', 0, 5, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


def saved_model_cli_command(export_dir):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  if os.path.exists(cli):
    return [cli, 'show', '--all', '--dir', export_dir]
  return [sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli', 'show', '--all',
          '--dir', export_dir]


class ExportTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.model = build_tiny_model()
    cls.export_dir = export_lib.export_saved_model(
        cls.model, os.path.join(cls._tmp.name, 'export', '1'), (INPUT_SIZE, INPUT_SIZE),
        max_image_pixels=MAX_IMAGE_PIXELS,
        extra_assets={'operative_config.gin': 'retinanet.num_classes = 5\n'},
        category_names=[c['name'] for c in shapes.CATEGORIES], **NMS_SETTINGS)
    # saved_model_cli imports TF and parses the graph for seconds: start it now and
    # let it run while the other tests do.
    cls._cli = subprocess.Popen(
        saved_model_cli_command(cls.export_dir), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
    cls.loaded = tf.saved_model.load(cls.export_dir)
    cls.images = sample_images()
    cls.png = [encode(image) for image in cls.images]
    cls.jpeg = [encode(image, 'JPEG') for image in cls.images]
    cls.expected_first = reference_detections(cls.model, cls.images[:1], **NMS_SETTINGS)

  @classmethod
  def tearDownClass(cls):
    if cls._cli.poll() is None:
      cls._cli.kill()
    cls._cli.communicate()
    cls._tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    # tf.test.TestCase seeds TF in every setUp, and seeding clears the eager kernel
    # cache: each test would re-optimize the loaded signatures (~2.5 s per signature).
    self._set_default_seed = False
    super().setUp()

  def _serve(self, signature, values):
    if signature == 'serving_default':
      signature = export_lib.DEFAULT_SIGNATURE
    input_name = export_lib.SIGNATURE_INPUTS[signature][0]
    return self.loaded.signatures[signature](**{input_name: tf.constant(values)})

  def test_export_folder(self):
    self.assertTrue(os.path.exists(os.path.join(self.export_dir, 'saved_model.pb')))
    # Nothing is left beside the export (temporary folders are moved or removed).
    self.assertEqual(os.listdir(os.path.dirname(self.export_dir)), ['1'])
    config = export_lib.read_export_config(self.export_dir)
    self.assertEqual(config['options']['score_threshold'], NMS_SETTINGS['score_threshold'])
    self.assertEqual(config['options']['max_detections'], NMS_SETTINGS['max_detections'])
    self.assertEqual(config['options']['max_image_pixels'], MAX_IMAGE_PIXELS)
    self.assertIsNone(config['options']['batch_size'])
    self.assertEqual(config['model_input_size'], [INPUT_SIZE, INPUT_SIZE])
    self.assertEqual(config['category_names']['1'], 'circle')
    self.assertEqual(config['signatures']['image_bytes']['input'],
                     {'name': 'image_bytes', 'dtype': 'string', 'shape': [None]})
    self.assertEqual(config['extra_assets'], ['operative_config.gin'])
    with open(os.path.join(self.export_dir, 'assets.extra', 'operative_config.gin')) as f:
      self.assertEqual(f.read(), 'retinanet.num_classes = 5\n')
    self.assertCountEqual(
        self.loaded.signatures.keys(),
        ['image_tensor', 'image_bytes', 'tf_example', 'serving_default'])

  def test_image_tensor_matches_in_process_model_batch_1_and_3(self):
    same_size = sample_images([IMAGE_SIZES[2]] * 3, seed=1)
    expected = reference_detections(self.model, same_size, **NMS_SETTINGS)
    self.assertGreater(expected['num_detections'].min(), 0)
    served = self._serve('image_tensor', np.stack(same_size))
    assert_same_detections(self, served, expected)
    single = self._serve('image_tensor', same_size[1][None])
    assert_same_detections(self, single, {k: v[1:2] for k, v in expected.items()
                                          if k != 'raw_outputs'})

  def test_image_bytes_of_different_sizes_match_in_process_model(self):
    encoded = [self.png[0], self.jpeg[1], self.png[2]]
    expected = reference_detections(self.model, [decode(e) for e in encoded],
                                    **NMS_SETTINGS)
    served = self._serve('image_bytes', encoded)
    assert_same_detections(self, served, expected)
    self.assertAllEqual(served['image_info'][:, 0], [IMAGE_SIZES[0], IMAGE_SIZES[1],
                                                     IMAGE_SIZES[2]])
    # Boxes are in original pixels: inside each image, not inside the 128 px input.
    for i, (height, width) in enumerate(IMAGE_SIZES):
      boxes = served['detection_boxes'][i].numpy()
      self.assertLessEqual(boxes[:, [0, 2]].max(), height)
      self.assertLessEqual(boxes[:, [1, 3]].max(), width)
    self.assertGreater(served['detection_boxes'][2].numpy().max(), INPUT_SIZE)
    single = self._serve('image_bytes', encoded[1:2])
    assert_same_detections(self, single, {k: v[1:2] for k, v in expected.items()
                                          if k != 'raw_outputs'})
    default = self._serve('serving_default', encoded)
    self.assertAllClose(default['detection_boxes'], served['detection_boxes'])

  def test_tf_example_matches_in_process_model(self):
    examples = [tfexample.make_detection_example(
        encoded_image=data, image_format='png', height=image.shape[0], width=image.shape[1],
        source_id=i + 1, boxes=[[0.1, 0.1, 0.5, 0.5]], classes=[1]).SerializeToString()
                for i, (data, image) in enumerate(zip(self.png, self.images))]
    expected = reference_detections(self.model, self.images, **NMS_SETTINGS)
    assert_same_detections(self, self._serve('tf_example', examples), expected)

  def test_preprocessing_equals_eval_parser(self):
    from official.vision.dataloaders import retinanet_input  # pylint: disable=g-import-not-at-top
    from official.vision.dataloaders import tf_example_decoder  # pylint: disable=g-import-not-at-top
    parser = retinanet_input.Parser(output_size=[INPUT_SIZE, INPUT_SIZE], min_level=3,
                                    max_level=7, num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                                    anchor_size=4.0, aug_rand_hflip=False, dtype='float32')
    decoder = tf_example_decoder.TfExampleDecoder(include_mask=False,
                                                  regenerate_source_id=False)
    for data, image in zip(self.jpeg, self.images):
      example = tfexample.make_detection_example(
          encoded_image=data, image_format='jpeg', height=image.shape[0],
          width=image.shape[1], source_id=1, boxes=[[0.1, 0.1, 0.5, 0.5]], classes=[1])
      want_image, labels = parser.parse_fn(False)(
          decoder.decode(tf.constant(example.SerializeToString())))
      got_image, got_info = preprocessing.preprocess_image(
          preprocessing.decode_image(tf.constant(data)), (INPUT_SIZE, INPUT_SIZE),
          preprocessing.padded_size((INPUT_SIZE, INPUT_SIZE), 7))
      self.assertAllEqual(got_image, want_image)
      self.assertAllEqual(got_info, labels['image_info'])

  def test_saved_model_cli_lists_the_signatures(self):
    stdout, stderr = self._cli.communicate(timeout=120)
    self.assertEqual(self._cli.returncode, 0, stderr[-2000:])
    print(stdout)
    for signature, (input_name, dtype, _) in export_lib.SIGNATURE_INPUTS.items():
      block = stdout.split(f"signature_def['{signature}']:")[1].split('signature_def[')[0]
      self.assertIn(f"inputs['{input_name}'] tensor_info:\n"
                    f"        dtype: DT_{dtype.name.upper()}", block)
      for output, out_dtype in (('detection_boxes', 'DT_FLOAT'),
                                ('detection_scores', 'DT_FLOAT'),
                                ('detection_classes', 'DT_INT32'),
                                ('num_detections', 'DT_INT32'),
                                ('image_info', 'DT_FLOAT')):
        self.assertIn(f"outputs['{output}'] tensor_info:\n        dtype: {out_dtype}", block)
      self.assertIn('Method name is: tensorflow/serving/predict', block)
    self.assertIn("signature_def['serving_default']", stdout)
    self.assertIn("shape: (-1, -1, -1, 3)", stdout)  # dynamic batch and image size

  def _assert_refused_then_serves(self, signature, values, message):
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      self._serve(signature, values)
    # The same loaded model answers the next valid request, correctly.
    assert_same_detections(self, self._serve('image_bytes', self.png[:1]),
                           self.expected_first)

  def test_empty_bytes(self):
    self._assert_refused_then_serves('image_bytes', [self.png[0], b''],
                                     r'image_bytes: empty image bytes')

  def test_non_image_bytes(self):
    self._assert_refused_then_serves('image_bytes', [b'hello, I am text, not a picture'],
                                     r'image_bytes: not a JPEG or PNG file.*hello')

  def test_corrupt_bytes(self):
    png = self.png[0]
    self._assert_refused_then_serves('image_bytes', [png[:60] + b'\0' * 40 + png[100:]],
                                     r'Invalid PNG data')
    self._assert_refused_then_serves('image_bytes', [png[:20]], r'truncated PNG')
    jpeg = self.jpeg[0]
    self._assert_refused_then_serves('image_bytes', [jpeg[:len(jpeg) // 2]],
                                     r'Invalid JPEG data')
    self._assert_refused_then_serves('image_bytes', [jpeg[:4] + b'\x13' * 200],
                                     r'JPEG')

  def test_zero_sized_image(self):
    self._assert_refused_then_serves('image_bytes', [zero_width_png()],
                                     r'image_bytes: the image is zero-sized \(5x0 pixels')
    self._assert_refused_then_serves('image_tensor', np.zeros([1, 0, 7, 3], np.uint8),
                                     r'images: the image is zero-sized \(0x7 pixels')

  def test_image_over_the_pixel_limit(self):
    big = np.zeros([301, 400, 3], np.uint8)  # 120400 pixels > 300 * 400
    self._assert_refused_then_serves(
        'image_bytes', [encode(big)],
        r'image_bytes: the image has 301x400 = 120400 pixels, more than '
        r'max_image_pixels=120000')
    self._assert_refused_then_serves('image_tensor', big[None], r'120400 pixels')
    example = tfexample.make_detection_example(
        encoded_image=encode(big, 'JPEG'), image_format='jpeg', height=301, width=400,
        source_id=1, boxes=np.zeros([0, 4]), classes=[])
    self._assert_refused_then_serves('tf_example', [example.SerializeToString()],
                                     r'tf_examples image/encoded: .*120400 pixels')

  def test_bad_tf_examples(self):
    self._assert_refused_then_serves('tf_example', [b'not a tf.Example'],
                                     r'Could not parse example')
    self._assert_refused_then_serves('tf_example', [tf.train.Example().SerializeToString()],
                                     r'tf_examples image/encoded: empty image bytes')

  def test_wrong_dtype_is_rejected_by_the_signature(self):
    with self.assertRaisesRegex((TypeError, ValueError, tf.errors.InvalidArgumentError),
                                r'uint8'):
      self._serve('image_tensor', np.zeros([1, 8, 8, 3], np.float32))
    with self.assertRaises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
      self._serve('image_bytes', np.zeros([1], np.int32))
    self._assert_refused_then_serves('image_bytes', [b''], r'empty')

  def test_refuses_to_overwrite_and_leaves_nothing_on_failure(self):
    target = os.path.join(self.get_temp_dir(), 'taken')
    os.makedirs(target)
    with open(os.path.join(target, 'keep.txt'), 'w') as f:
      f.write('x')
    with self.assertRaisesRegex(FileExistsError, 'overwrite=True'):
      export_lib.export_saved_model(self.model, target, (INPUT_SIZE, INPUT_SIZE))
    self.assertEqual(os.listdir(target), ['keep.txt'])
    # A failure while saving removes the temporary folder and keeps the old export.
    with mock.patch.object(export_lib.DetectionServingModule, 'signatures',
                           return_value={}), \
         mock.patch.object(tf.saved_model, 'save', side_effect=OSError('disk full')):
      with self.assertRaisesRegex(OSError, 'disk full'):
        export_lib.export_saved_model(self.model, target, (INPUT_SIZE, INPUT_SIZE),
                                      overwrite=True)
    self.assertEqual(sorted(os.listdir(self.get_temp_dir())), ['taken'])
    self.assertEqual(os.listdir(target), ['keep.txt'])
    with self.assertRaisesRegex(ValueError, 'input_image_size'):
      export_lib.export_saved_model(self.model, os.path.join(self.get_temp_dir(), 'new'),
                                    (INPUT_SIZE, 0))
    with self.assertRaisesRegex(ValueError, 'build it'):
      export_lib.export_saved_model(build_unbuilt_model(),
                                    os.path.join(self.get_temp_dir(), 'new'),
                                    (INPUT_SIZE, INPUT_SIZE))
    with self.assertRaisesRegex(ValueError, 'backbone was built for input'):
      export_lib.export_saved_model(self.model, os.path.join(self.get_temp_dir(), 'new'),
                                    (256, 256))
    self.assertFalse(os.path.exists(os.path.join(self.get_temp_dir(), 'new')))

  def test_move_into_place_replaces_empty_and_non_empty_folders(self):
    root = self.get_temp_dir()
    for existing in ([], ['old.txt']):
      target = os.path.join(root, f'target{len(existing)}')
      os.makedirs(target)
      for name in existing:
        open(os.path.join(target, name), 'w').close()
      new = tempfile.mkdtemp(dir=root)
      open(os.path.join(new, 'saved_model.pb'), 'w').close()
      export_lib._move_into_place(new, target)  # pylint: disable=protected-access
      self.assertEqual(os.listdir(target), ['saved_model.pb'])
      self.assertFalse(os.path.exists(new))
    self.assertCountEqual(os.listdir(root), ['target0', 'target1'])


@pytest.mark.slow
class ExportWithoutNmsTest(tf.test.TestCase):
  """apply_nms=False, a fixed batch size, and overwrite=True of an existing export."""

  def test_decoded_boxes_and_scores_for_all_anchors(self):
    model = build_tiny_model()
    export_dir = os.path.join(self.get_temp_dir(), 'raw')
    os.makedirs(export_dir)
    open(os.path.join(export_dir, 'stale.txt'), 'w').close()
    export_lib.export_saved_model(model, export_dir, (INPUT_SIZE, INPUT_SIZE),
                                  apply_nms=False, batch_size=2, overwrite=True)
    self.assertNotIn('stale.txt', os.listdir(export_dir))
    loaded = tf.saved_model.load(export_dir)
    images = sample_images(IMAGE_SIZES[:2], seed=2)
    served = loaded.signatures['image_bytes'](
        image_bytes=tf.constant([encode(image) for image in images]))
    self.assertCountEqual(served.keys(), ['decoded_boxes', 'decoded_box_scores',
                                          'image_info'])
    num_anchors = 9 * sum((INPUT_SIZE // 2**level)**2 for level in range(3, 8))
    self.assertEqual(served['decoded_boxes'].shape, (2, num_anchors, 4))
    self.assertEqual(served['decoded_box_scores'].shape, (2, num_anchors, NUM_CLASSES - 1))

    expected = reference_detections(model, images, **NMS_SETTINGS)
    info = expected['image_info']
    decoded = postprocessing.decode_all_anchors(
        expected['raw_outputs'], model.anchor_boxes((INPUT_SIZE, INPUT_SIZE)), info[:, 1])
    self.assertAllClose(served['decoded_box_scores'], decoded['decoded_box_scores'],
                        atol=ATOL)
    self.assertAllClose(served['decoded_boxes'], postprocessing.boxes_to_original(
        decoded['decoded_boxes'], info), atol=ATOL)
    # Every NMS detection is one of the decoded anchors: same box, and its score in the
    # column of its class (column c is class c + 1).
    for i, count in enumerate(expected['num_detections']):
      boxes = served['decoded_boxes'][i].numpy()
      scores = served['decoded_box_scores'][i].numpy()
      for box, score, cls in zip(expected['detection_boxes'][i, :count],
                                 expected['detection_scores'][i, :count],
                                 expected['detection_classes'][i, :count]):
        candidates = np.flatnonzero(np.abs(scores[:, cls - 1] - score) < ATOL)
        self.assertTrue(any(np.allclose(boxes[j], box, atol=1e-3) for j in candidates),
                        f'detection {box} {score} class {cls} is not a decoded anchor')
    with self.assertRaises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
      loaded.signatures['image_bytes'](image_bytes=tf.constant([encode(images[0])]))


if __name__ == '__main__':
  tf.test.main()

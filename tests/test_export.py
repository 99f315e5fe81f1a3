"""SavedModel export: signatures equal the in-process model, bad input, saved_model_cli.

One tiny SpineNet-49 RetinaNet is exported once per test class; its random predictor
weights are re-drawn large so that it detects things at the export's score threshold.
"""

import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.data import shapes
from official_spinenet.data import tfexample
from official_spinenet.serving import export_lib
from official_spinenet.serving import postprocessing
from official_spinenet.serving import preprocessing
from tests import export_fixtures

INPUT_SIZE = export_fixtures.INPUT_SIZE
NUM_CLASSES = export_fixtures.NUM_CLASSES
NMS_SETTINGS = export_fixtures.NMS_SETTINGS
MAX_IMAGE_PIXELS = 300 * 400
IMAGE_SIZES = export_fixtures.IMAGE_SIZES
ATOL = export_fixtures.ATOL


def saved_model_cli_command(export_dir):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  if os.path.exists(cli):
    return [cli, 'show', '--all', '--dir', export_dir]
  return [
    sys.executable,
    '-m',
    'tensorflow.python.tools.saved_model_cli',
    'show',
    '--all',
    '--dir',
    export_dir,
  ]


class ExportTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.model = export_fixtures.build_tiny_model()
    cls.export_dir = export_lib.export_saved_model(
      cls.model,
      os.path.join(cls._tmp.name, 'export', '1'),
      (INPUT_SIZE, INPUT_SIZE),
      max_image_pixels=MAX_IMAGE_PIXELS,
      extra_assets={'operative_config.gin': 'retinanet.num_classes = 5\n'},
      category_names=[c['name'] for c in shapes.CATEGORIES],
      **NMS_SETTINGS,
    )
    # saved_model_cli imports TF and parses the graph for seconds: start it now and
    # let it run while the other tests do.
    cls._cli = subprocess.Popen(
      saved_model_cli_command(cls.export_dir),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
    )
    cls.loaded = tf.saved_model.load(cls.export_dir)
    cls.images = export_fixtures.sample_images()
    cls.png = [export_fixtures.encode(image) for image in cls.images]
    cls.jpeg = [export_fixtures.encode(image, 'JPEG') for image in cls.images]
    cls.expected_first = export_fixtures.reference_detections(
      cls.model, cls.images[:1], **NMS_SETTINGS
    )

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
    self.assertEqual(
      config['signatures']['image_bytes']['input'],
      {'name': 'image_bytes', 'dtype': 'string', 'shape': [None]},
    )
    self.assertEqual(config['extra_assets'], ['operative_config.gin'])
    with open(os.path.join(self.export_dir, 'assets.extra', 'operative_config.gin')) as f:
      self.assertEqual(f.read(), 'retinanet.num_classes = 5\n')
    self.assertCountEqual(
      self.loaded.signatures.keys(),
      ['image_tensor', 'image_bytes', 'tf_example', 'serving_default'],
    )

  def test_image_tensor_matches_in_process_model_batch_1_and_3(self):
    same_size = export_fixtures.sample_images([IMAGE_SIZES[2]] * 3, seed=1)
    expected = export_fixtures.reference_detections(self.model, same_size, **NMS_SETTINGS)
    self.assertGreater(expected['num_detections'].min(), 0)
    served = self._serve('image_tensor', np.stack(same_size))
    export_fixtures.assert_same_detections(self, served, expected)
    single = self._serve('image_tensor', same_size[1][None])
    export_fixtures.assert_same_detections(
      self, single, {k: v[1:2] for k, v in expected.items() if k != 'raw_outputs'}
    )

  def test_image_bytes_of_different_sizes_match_in_process_model(self):
    encoded = [self.png[0], self.jpeg[1], self.png[2]]
    expected = export_fixtures.reference_detections(
      self.model, [export_fixtures.decode(e) for e in encoded], **NMS_SETTINGS
    )
    served = self._serve('image_bytes', encoded)
    export_fixtures.assert_same_detections(self, served, expected)
    self.assertAllEqual(
      served['image_info'][:, 0], [IMAGE_SIZES[0], IMAGE_SIZES[1], IMAGE_SIZES[2]]
    )
    # Boxes are in original pixels: inside each image, not inside the 128 px input.
    for i, (height, width) in enumerate(IMAGE_SIZES):
      boxes = served['detection_boxes'][i].numpy()
      self.assertLessEqual(boxes[:, [0, 2]].max(), height)
      self.assertLessEqual(boxes[:, [1, 3]].max(), width)
    self.assertGreater(served['detection_boxes'][2].numpy().max(), INPUT_SIZE)
    single = self._serve('image_bytes', encoded[1:2])
    export_fixtures.assert_same_detections(
      self, single, {k: v[1:2] for k, v in expected.items() if k != 'raw_outputs'}
    )
    default = self._serve('serving_default', encoded)
    self.assertAllClose(default['detection_boxes'], served['detection_boxes'])

  def test_tf_example_matches_in_process_model(self):
    examples = [
      tfexample.make_detection_example(
        encoded_image=data,
        image_format='png',
        height=image.shape[0],
        width=image.shape[1],
        source_id=i + 1,
        boxes=[[0.1, 0.1, 0.5, 0.5]],
        classes=[1],
      ).SerializeToString()
      for i, (data, image) in enumerate(zip(self.png, self.images))
    ]
    expected = export_fixtures.reference_detections(self.model, self.images, **NMS_SETTINGS)
    export_fixtures.assert_same_detections(self, self._serve('tf_example', examples), expected)

  def test_preprocessing_equals_eval_parser(self):
    from official.vision.dataloaders import retinanet_input  # pylint: disable=g-import-not-at-top
    from official.vision.dataloaders import tf_example_decoder  # pylint: disable=g-import-not-at-top

    parser = retinanet_input.Parser(
      output_size=[INPUT_SIZE, INPUT_SIZE],
      min_level=3,
      max_level=7,
      num_scales=3,
      aspect_ratios=[0.5, 1.0, 2.0],
      anchor_size=4.0,
      aug_rand_hflip=False,
      dtype='float32',
    )
    decoder = tf_example_decoder.TfExampleDecoder(include_mask=False, regenerate_source_id=False)
    for data, image in zip(self.jpeg, self.images):
      example = tfexample.make_detection_example(
        encoded_image=data,
        image_format='jpeg',
        height=image.shape[0],
        width=image.shape[1],
        source_id=1,
        boxes=[[0.1, 0.1, 0.5, 0.5]],
        classes=[1],
      )
      want_image, labels = parser.parse_fn(False)(
        decoder.decode(tf.constant(example.SerializeToString()))
      )
      got_image, got_info = preprocessing.preprocess_image(
        preprocessing.decode_image(tf.constant(data)),
        (INPUT_SIZE, INPUT_SIZE),
        preprocessing.padded_size((INPUT_SIZE, INPUT_SIZE), 7),
      )
      self.assertAllEqual(got_image, want_image)
      self.assertAllEqual(got_info, labels['image_info'])

  def test_saved_model_cli_lists_the_signatures(self):
    stdout, stderr = self._cli.communicate(timeout=120)
    self.assertEqual(self._cli.returncode, 0, stderr[-2000:])
    print(stdout)
    for signature, (input_name, dtype, _) in export_lib.SIGNATURE_INPUTS.items():
      block = stdout.split(f"signature_def['{signature}']:")[1].split('signature_def[')[0]
      self.assertIn(
        f"inputs['{input_name}'] tensor_info:\n        dtype: DT_{dtype.name.upper()}", block
      )
      for output, out_dtype in (
        ('detection_boxes', 'DT_FLOAT'),
        ('detection_scores', 'DT_FLOAT'),
        ('detection_classes', 'DT_INT32'),
        ('num_detections', 'DT_INT32'),
        ('image_info', 'DT_FLOAT'),
      ):
        self.assertIn(f"outputs['{output}'] tensor_info:\n        dtype: {out_dtype}", block)
      self.assertIn('Method name is: tensorflow/serving/predict', block)
    self.assertIn("signature_def['serving_default']", stdout)
    self.assertIn("shape: (-1, -1, -1, 3)", stdout)  # dynamic batch and image size

  def _assert_refused_then_serves(self, signature, values, message):
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
      self._serve(signature, values)
    # The same loaded model answers the next valid request, correctly.
    export_fixtures.assert_same_detections(
      self, self._serve('image_bytes', self.png[:1]), self.expected_first
    )

  def test_empty_bytes(self):
    self._assert_refused_then_serves(
      'image_bytes', [self.png[0], b''], r'image_bytes\[1\]: empty image bytes'
    )

  def test_non_image_bytes(self):
    self._assert_refused_then_serves(
      'image_bytes',
      [b'hello, I am text, not a picture'],
      r'image_bytes\[0\]: not a JPEG or PNG file \(31 bytes, starting with 68 65 6c 6c',
    )

  def test_corrupt_bytes(self):
    png = self.png[0]
    self._assert_refused_then_serves(
      'image_bytes',
      [png[:60] + b'\0' * 40 + png[100:]],
      r'image_bytes\[0\]: the PNG could not be decoded',
    )
    self._assert_refused_then_serves('image_bytes', [png[:20]], r'image_bytes\[0\]: truncated PNG')
    jpeg = self.jpeg[0]
    self._assert_refused_then_serves(
      'image_bytes', [jpeg[: len(jpeg) // 2]], r'the JPEG could not be decoded'
    )
    self._assert_refused_then_serves(
      'image_bytes', [jpeg[:4] + b'\x13' * 200], r'JPEG header is corrupt'
    )

  def test_zero_sized_image(self):
    self._assert_refused_then_serves(
      'image_bytes',
      [export_fixtures.zero_width_png()],
      r'image_bytes\[0\]: the image is zero-sized \(5x0 pixels',
    )
    self._assert_refused_then_serves(
      'image_tensor',
      np.zeros([1, 0, 7, 3], np.uint8),
      r'images: the image is zero-sized \(0x7 pixels',
    )

  def test_image_over_the_pixel_limit(self):
    big = np.zeros([301, 400, 3], np.uint8)  # 120400 pixels > 300 * 400
    self._assert_refused_then_serves(
      'image_bytes',
      [export_fixtures.encode(big)],
      r'image_bytes\[0\]: the image has 301x400 = 120400 pixels, more than '
      r'max_image_pixels=120000',
    )
    self._assert_refused_then_serves('image_tensor', big[None], r'120400 pixels')
    example = tfexample.make_detection_example(
      encoded_image=export_fixtures.encode(big, 'JPEG'),
      image_format='jpeg',
      height=301,
      width=400,
      source_id=1,
      boxes=np.zeros([0, 4]),
      classes=[],
    )
    self._assert_refused_then_serves(
      'tf_example',
      [example.SerializeToString()],
      r'tf_examples\[0\] image/encoded: .*120400 pixels',
    )

  def test_bad_tf_examples(self):
    self._assert_refused_then_serves(
      'tf_example', [b'not a tf.Example'], r'tf_examples\[0\]: not a serialized tf.Example'
    )
    self._assert_refused_then_serves(
      'tf_example',
      [tf.train.Example().SerializeToString()],
      r'tf_examples\[0\]: the tf.Example has no image/encoded',
    )

  def test_wrong_dtype_is_rejected_by_the_signature(self):
    with self.assertRaisesRegex((TypeError, ValueError, tf.errors.InvalidArgumentError), r'uint8'):
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
    with (
      mock.patch.object(export_lib.DetectionServingModule, 'signatures', return_value={}),
      mock.patch.object(tf.saved_model, 'save', side_effect=OSError('disk full')),
    ):
      with self.assertRaisesRegex(OSError, 'disk full'):
        export_lib.export_saved_model(self.model, target, (INPUT_SIZE, INPUT_SIZE), overwrite=True)
    self.assertEqual(sorted(os.listdir(self.get_temp_dir())), ['taken'])
    self.assertEqual(os.listdir(target), ['keep.txt'])
    with self.assertRaisesRegex(ValueError, 'input_image_size'):
      export_lib.export_saved_model(
        self.model, os.path.join(self.get_temp_dir(), 'new'), (INPUT_SIZE, 0)
      )
    with self.assertRaisesRegex(ValueError, 'build it'):
      export_lib.export_saved_model(
        export_fixtures.build_unbuilt_model(),
        os.path.join(self.get_temp_dir(), 'new'),
        (INPUT_SIZE, INPUT_SIZE),
      )
    with self.assertRaisesRegex(ValueError, 'backbone was built for input'):
      export_lib.export_saved_model(
        self.model, os.path.join(self.get_temp_dir(), 'new'), (256, 256)
      )
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
    model = export_fixtures.build_tiny_model()
    export_dir = os.path.join(self.get_temp_dir(), 'raw')
    os.makedirs(export_dir)
    open(os.path.join(export_dir, 'stale.txt'), 'w').close()
    export_lib.export_saved_model(
      model, export_dir, (INPUT_SIZE, INPUT_SIZE), apply_nms=False, batch_size=2, overwrite=True
    )
    self.assertNotIn('stale.txt', os.listdir(export_dir))
    loaded = tf.saved_model.load(export_dir)
    images = export_fixtures.sample_images(IMAGE_SIZES[:2], seed=2)
    served = loaded.signatures['image_bytes'](
      image_bytes=tf.constant([export_fixtures.encode(image) for image in images])
    )
    self.assertCountEqual(served.keys(), ['decoded_boxes', 'decoded_box_scores', 'image_info'])
    num_anchors = 9 * sum((INPUT_SIZE // 2**level) ** 2 for level in range(3, 8))
    self.assertEqual(served['decoded_boxes'].shape, (2, num_anchors, 4))
    self.assertEqual(served['decoded_box_scores'].shape, (2, num_anchors, NUM_CLASSES - 1))

    expected = export_fixtures.reference_detections(model, images, **NMS_SETTINGS)
    info = expected['image_info']
    decoded = postprocessing.decode_all_anchors(
      expected['raw_outputs'], model.anchor_boxes((INPUT_SIZE, INPUT_SIZE)), info[:, 1]
    )
    self.assertAllClose(served['decoded_box_scores'], decoded['decoded_box_scores'], atol=ATOL)
    self.assertAllClose(
      served['decoded_boxes'],
      postprocessing.boxes_to_original(decoded['decoded_boxes'], info),
      atol=ATOL,
    )
    # Every NMS detection is one of the decoded anchors: same box, and its score in the
    # column of its class (column c is class c + 1).
    for i, count in enumerate(expected['num_detections']):
      boxes = served['decoded_boxes'][i].numpy()
      scores = served['decoded_box_scores'][i].numpy()
      for box, score, cls in zip(
        expected['detection_boxes'][i, :count],
        expected['detection_scores'][i, :count],
        expected['detection_classes'][i, :count],
      ):
        candidates = np.flatnonzero(np.abs(scores[:, cls - 1] - score) < ATOL)
        self.assertTrue(
          any(np.allclose(boxes[j], box, atol=1e-3) for j in candidates),
          f'detection {box} {score} class {cls} is not a decoded anchor',
        )
    with self.assertRaises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
      loaded.signatures['image_bytes'](image_bytes=tf.constant([export_fixtures.encode(images[0])]))


if __name__ == '__main__':
  tf.test.main()

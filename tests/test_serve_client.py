"""The serving client's requests are accepted by the exported SavedModel; no network.

TF Serving cannot run here, so a small fake (export_fixtures.FakeServing) stands in for
it: it turns each REST JSON
body or gRPC PredictRequest into tensors the way TF Serving does (b64 strings decoded,
values typed by the signature's input dtype), checks the signature name, input names,
dtypes and shapes against the loaded SavedModel's signature, calls it, and answers in
TF Serving's reply formats.
"""

import base64
import io
import json
import os
import tempfile
from unittest import mock
import urllib.error

from absl import flags
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from official_spinenet.binaries import serve_client
from official_spinenet.serving import client_lib
from official_spinenet.serving import client_runner
from official_spinenet.serving import drawing
from official_spinenet.serving import export_lib
from tests import export_fixtures


class ServeClientTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.export_dir = export_lib.export_saved_model(
      export_fixtures.build_tiny_model(),
      os.path.join(cls._tmp.name, 'spinenet', '1'),
      (export_fixtures.INPUT_SIZE, export_fixtures.INPUT_SIZE),
      category_names=['circle', 'square', 'triangle', 'cross'],
      **export_fixtures.NMS_SETTINGS,
    )
    cls.loaded = tf.saved_model.load(cls.export_dir)
    cls.images = export_fixtures.sample_images()
    cls.png = [export_fixtures.encode(image) for image in cls.images]
    cls.jpeg = [export_fixtures.encode(image, 'JPEG') for image in cls.images]
    cls.image_dir = os.path.join(cls._tmp.name, 'images')
    os.makedirs(cls.image_dir)
    for i, (png, jpeg) in enumerate(zip(cls.png, cls.jpeg)):
      with open(os.path.join(cls.image_dir, f'{i}.png'), 'wb') as f:
        f.write(png)
      with open(os.path.join(cls.image_dir, f'{i}.jpg'), 'wb') as f:
        f.write(jpeg)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    self._set_default_seed = False  # seeding clears the signatures' compiled kernels
    super().setUp()
    self.server = export_fixtures.FakeServing(self, self.loaded)

  def _direct(self, signature, values):
    input_name = export_lib.SIGNATURE_INPUTS[signature][0]
    outputs = self.loaded.signatures[signature](**{input_name: tf.constant(values)})
    return {k: v.numpy() for k, v in outputs.items()}

  def _assert_outputs_equal(self, got, want):
    self.assertCountEqual(got.keys(), want.keys())
    for key in want:
      self.assertAllClose(np.asarray(got[key]), want[key], atol=1e-5, msg=key)

  def test_input_names_match_the_export(self):
    for signature, (input_name, _, _) in export_lib.SIGNATURE_INPUTS.items():
      self.assertEqual(client_lib.SIGNATURE_INPUT_NAMES[signature], input_name)
      self.assertEqual(
        list(self.loaded.signatures[signature].structured_input_signature[1]), [input_name]
      )
    self.assertEqual(
      client_lib.SIGNATURE_INPUT_NAMES['serving_default'],
      export_lib.SIGNATURE_INPUTS[export_lib.DEFAULT_SIGNATURE][0],
    )

  def test_rest_image_bytes_rows_and_columns(self):
    encoded = [self.png[0], self.jpeg[1], self.png[2]]
    want = self._direct('image_bytes', encoded)
    for columnar in (False, True):
      payload = client_lib.rest_predict_payload(encoded, 'image_bytes', columnar=columnar)
      self.assertEqual(payload['signature_name'], 'image_bytes')
      body = json.dumps(payload)
      reply = json.loads(self.server.rest(body))
      key = 'outputs' if columnar else 'predictions'
      outputs = (
        reply[key] if columnar else {k: [row[k] for row in reply[key]] for k in reply[key][0]}
      )
      self._assert_outputs_equal(outputs, want)
      parsed = client_lib.parse_rest_response(reply)
      self._assert_detections_equal(parsed, want)
    row = client_lib.rest_predict_payload(encoded[:1])
    self.assertEqual(
      row['instances'][0]['image_bytes']['b64'], base64.b64encode(encoded[0]).decode('ascii')
    )

  def test_rest_image_tensor(self):
    image = self.images[1]
    want = self._direct('image_tensor', image[None])
    payload = client_lib.rest_predict_payload([image], 'image_tensor')
    self.assertEqual(list(payload['instances'][0]), ['images'])
    reply = json.loads(self.server.rest(json.dumps(payload)))
    self._assert_detections_equal(client_lib.parse_rest_response(reply), want)
    with self.assertRaisesRegex(ValueError, 'one size per request'):
      client_lib.rest_predict_payload(self.images[:2], 'image_tensor')

  def test_grpc_image_bytes_and_image_tensor(self):
    encoded = [self.jpeg[0], self.png[2]]
    request = client_lib.grpc_predict_request(encoded, 'spinenet', 'image_bytes', model_version=3)
    self.assertEqual(request.model_spec.name, 'spinenet')
    self.assertEqual(request.model_spec.version.value, 3)
    self.assertEqual(list(request.inputs), ['image_bytes'])
    response = self.server.grpc(request)
    want = self._direct('image_bytes', encoded)
    self._assert_outputs_equal({k: tf.make_ndarray(v) for k, v in response.outputs.items()}, want)
    self._assert_detections_equal(client_lib.parse_grpc_response(response), want)

    image = self.images[0]
    request = client_lib.grpc_predict_request([image], 'spinenet', 'image_tensor')
    self.assertEqual(request.inputs['images'].tensor_shape.dim[0].size, 1)
    self._assert_detections_equal(
      client_lib.parse_grpc_response(self.server.grpc(request)),
      self._direct('image_tensor', image[None]),
    )

  def _assert_detections_equal(self, parsed, outputs):
    want = client_lib.detections_from_outputs(outputs)
    self.assertLen(parsed, len(want))
    for got, expected in zip(parsed, want):
      self.assertEqual(got.image_size, expected.image_size)
      self.assertAllClose(got.boxes, expected.boxes, atol=1e-4)
      self.assertAllClose(got.scores, expected.scores, atol=1e-6)
      self.assertAllEqual(got.classes, expected.classes)
    # Padding is dropped: each image keeps num_detections entries.
    self.assertEqual([len(p.scores) for p in parsed], list(outputs['num_detections']))

  @pytest.mark.slow  # a second load of the SavedModel, into a TF1 Session
  def test_requests_run_in_a_session_as_tf_serving_runs_them(self):
    # TF Serving (C++) loads the MetaGraph into a Session and feeds / fetches the
    # SignatureDef's tensor names: do the same with the client's gRPC requests.
    requests = [
      client_lib.grpc_predict_request(self.png[:2], 'spinenet', 'image_bytes'),
      client_lib.grpc_predict_request(self.images[2:], 'spinenet', 'image_tensor'),
    ]
    # Computed first: the eager signatures cannot be called inside the TF1 graph below.
    want = [
      self._direct('image_bytes', self.png[:2]),
      self._direct('image_tensor', self.images[2][None]),
    ]
    bad = client_lib.grpc_predict_request([b'GIF89a'], 'spinenet', 'image_bytes')
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
      meta_graph = tf.compat.v1.saved_model.loader.load(session, ['serve'], self.export_dir)

      def run(request):
        signature = meta_graph.signature_def[request.model_spec.signature_name]
        self.assertEqual(signature.method_name, 'tensorflow/serving/predict')
        self.assertCountEqual(request.inputs, signature.inputs)
        feed = {}
        for name, proto in request.inputs.items():
          self.assertEqual(proto.dtype, signature.inputs[name].dtype)
          feed[signature.inputs[name].name] = tf.make_ndarray(proto)
        return session.run({k: v.name for k, v in signature.outputs.items()}, feed)

      self._assert_outputs_equal(run(requests[0]), want[0])
      with self.assertRaisesRegex(
        tf.errors.InvalidArgumentError, r'image_bytes\[0\]: GIF is not supported'
      ):
        run(bad)
      self._assert_outputs_equal(run(requests[1]), want[1])

  def test_rest_error_reply(self):
    with self.assertRaisesRegex(RuntimeError, 'not a JPEG or PNG'):
      client_lib.parse_rest_response({'error': 'image_bytes: not a JPEG or PNG file'})

  def test_find_images(self):
    folder = client_lib.find_images([self.image_dir])
    self.assertLen(folder, 6)
    self.assertEqual(
      client_lib.find_images([os.path.join(self.image_dir, '*.png')]),
      [os.path.join(self.image_dir, f'{i}.png') for i in range(3)],
    )
    single = os.path.join(self.image_dir, '1.jpg')
    self.assertEqual(client_lib.find_images([single, single]), [single])
    with self.assertRaisesRegex(ValueError, 'nothing-here'):
      client_lib.find_images([single, os.path.join(self.image_dir, 'nothing-here*.png')])
    self.assertEqual(
      [list(b) for b in client_lib.batches([1, 2, 3, 4, 5], 2)], [[1, 2], [3, 4], [5]]
    )

  def test_category_names_from_the_export(self):
    names = client_lib.load_category_names(
      os.path.join(self.export_dir, export_lib.EXTRA_ASSETS_DIR, export_lib.EXPORT_CONFIG_FILE)
    )
    self.assertEqual(names, {1: 'circle', 2: 'square', 3: 'triangle', 4: 'cross'})

  def test_drawing(self):
    image = Image.fromarray(np.zeros([60, 80, 3], np.uint8))
    drawn = np.asarray(
      drawing.draw_detections(
        image, np.array([[10.0, 20.0, 50.0, 70.0]]), np.array([0.9]), np.array([2]), {2: 'square'}
      )
    )
    self.assertEqual(drawn.shape, (60, 80, 3))
    self.assertGreater(drawn[30, 20].sum(), 0)  # left edge of the box
    self.assertEqual(drawn[30, 45].sum(), 0)  # inside the box stays untouched

  def _run_binary(self, *args):
    """Parses args with the binary's flags (own FlagValues) and runs it; returns stdout."""
    flag_values = flags.FlagValues()
    serve_client.define_flags(flag_values)
    flag_values(['spinenet-serve-client', *args])
    with mock.patch('sys.stdout', new_callable=io.StringIO) as stdout:
      returned = client_runner.run_client(serve_client.options_from_flags(flag_values))
    return stdout.getvalue(), returned

  def test_binary_over_rest_and_grpc_with_a_fake_server(self):
    server = self.server

    def urlopen(request, timeout):
      self.assertEqual(request.full_url, 'http://serving-host:8501/v1/models/spinenet:predict')
      self.assertGreater(timeout, 0)
      return io.BytesIO(server.rest(request.data.decode()).encode())

    out_dir = os.path.join(self.get_temp_dir(), 'drawn')
    json_path = os.path.join(self.get_temp_dir(), 'detections.json')
    label_map = os.path.join(self.export_dir, 'assets.extra', 'export_config.json')
    with mock.patch('urllib.request.urlopen', side_effect=urlopen) as opened:
      printed, _ = self._run_binary(
        f'--images={self.image_dir}',
        '--server=serving-host',
        '--batch_size=4',
        '--min_score=0.0',
        f'--label_map={label_map}',
        f'--output_dir={out_dir}',
        f'--output_json={json_path}',
      )
    self.assertEqual(opened.call_count, 2)  # 6 images in batches of 4
    self.assertIn('0.png (96x128):', printed)
    self.assertRegex(printed, r'(circle|square|triangle|cross)')
    self.assertCountEqual(
      os.listdir(out_dir), ['0.png', '0-2.png', '1.png', '1-2.png', '2.png', '2-2.png']
    )
    with Image.open(os.path.join(out_dir, '2-2.png')) as drawn:
      self.assertEqual(drawn.size, (200, 150))
    with open(json_path) as f:
      results = json.load(f)
    self.assertEqual(results['failed'], [])
    want = client_lib.detections_from_outputs(self._direct('image_bytes', self.png[:1]))[0]
    self.assertAllClose(
      results['detections'][os.path.join(self.image_dir, '0.png')]['scores'], want.scores
    )

    stub = mock.Mock()
    stub.return_value.Predict.side_effect = lambda request, timeout: server.grpc(request)
    with mock.patch(
      'tensorflow_serving.apis.prediction_service_pb2_grpc.PredictionServiceStub', stub
    ):
      printed, _ = self._run_binary(
        f'--images={self.image_dir}/1.*',
        '--protocol=grpc',
        '--signature=image_tensor',
        '--min_score=0.0',
      )
    self.assertEqual(stub.return_value.Predict.call_count, 2)  # one image per request
    self.assertIn('1.jpg (128x80):', printed)

  def test_binary_reports_a_refused_batch_and_goes_on(self):
    server = self.server
    bad = os.path.join(self.get_temp_dir(), 'a-bad.png')
    with open(bad, 'wb') as f:
      f.write(b'text, not a PNG')
    gif = os.path.join(self.get_temp_dir(), 'b-gif.png')
    Image.fromarray(self.images[0]).save(gif, format='GIF')

    def urlopen(request, timeout):
      del timeout
      try:
        return io.BytesIO(server.rest(request.data.decode()).encode())
      except tf.errors.InvalidArgumentError as e:  # TF Serving answers 400 + JSON error
        raise urllib.error.HTTPError(
          request.full_url,
          400,
          'Bad Request',
          {},
          io.BytesIO(json.dumps({'error': e.message}).encode()),
        ) from e

    good = os.path.join(self.image_dir, '0.png')
    with mock.patch('urllib.request.urlopen', side_effect=urlopen) as opened:
      printed, (results, failed) = self._run_binary(f'--images={bad},{gif},{good}')
    # The refused batch of three is sent again image by image: the good one gets results.
    self.assertEqual(opened.call_count, 4)
    self.assertEqual(failed, [bad, gif])
    self.assertRegex(
      printed, r'FAILED \S*a-bad.png: image_bytes\[0\]: not a JPEG or PNG file \(15 bytes'
    )
    self.assertRegex(
      printed, r'FAILED \S*b-gif.png: image_bytes\[0\]: GIF is not supported; send JPEG or PNG\n'
    )
    self.assertEqual(list(results), [good])


def test_drawing_fills_masks_in_the_class_colour():
  image = Image.fromarray(np.full([60, 80, 3], 100, np.uint8))
  mask = np.zeros([60, 80], np.uint8)
  mask[20:40, 30:50] = 1
  drawn = np.asarray(
    drawing.draw_detections(
      image,
      np.array([[10.0, 20.0, 50.0, 70.0]]),
      np.array([0.9]),
      np.array([2]),
      {2: 'square'},
      masks=iter([mask]),
    )
  ).astype(float)
  colour = np.array(drawing._COLOURS[2])  # pylint: disable=protected-access
  np.testing.assert_allclose(
    drawn[30, 40], np.round(100 * (1 - drawing.MASK_ALPHA) + colour * drawing.MASK_ALPHA)
  )
  np.testing.assert_array_equal(drawn[45, 40], [100, 100, 100])  # in the box, not the mask
  assert drawn[30, 20].tolist() == colour.tolist()  # the box's edge is drawn over the fill


def test_detections_with_crop_or_pasted_masks():
  outputs = {
    'detection_boxes': np.array([[[2.0, 2.0, 6.0, 8.0], [0.0, 0.0, 0.0, 0.0]]] * 2),
    'detection_scores': np.array([[0.9, 0.0], [0.8, 0.0]]),
    'detection_classes': np.array([[1, 0], [3, 0]]),
    'num_detections': np.array([1, 1]),
    'image_info': np.array([[[8.0, 10.0]] * 4, [[10.0, 12.0]] * 4]),
  }
  crop = np.random.default_rng(0).uniform(size=[2, 2, 28, 28])
  # Crop masks (floats) stay per box; a REST reply's nested lists parse the same.
  for masks in (crop.astype(np.float32), crop.tolist()):
    parsed = client_lib.detections_from_outputs({**outputs, 'detection_masks': masks})
    assert parsed[0].masks.shape == (1, 28, 28) and parsed[0].masks.dtype == np.float32
  # Pasted masks (integers) are cut to each image's own size.
  pasted = np.zeros([2, 2, 10, 12], np.uint8)
  pasted[0, 0, 2:6, 2:8] = 1
  for masks in (pasted, pasted.tolist()):
    first, second = client_lib.detections_from_outputs({**outputs, 'detection_masks': masks})
    assert first.masks.shape == (1, 8, 10) and second.masks.shape == (1, 10, 12)
    assert first.masks.sum() == 24 and first.above(0.95).masks.shape == (0, 8, 10)
  assert client_lib.detections_from_outputs(outputs)[0].masks is None


def test_category_names_in_every_format(tmp_path):
  """One loader for the export, predict, TFLite and client class names; clear errors."""
  files = {
    'coco.json': {'images': [], 'categories': [{'id': 3, 'name': 'cat'}]},
    'list.json': ['a', 'b'],
    'ids.json': {'2': 'b'},
    'export_config.json': {'options': {}, 'category_names': {'1': 'a'}},
    'no_names.json': {'options': {}, 'category_names': None},
    'text.json': 'text',
  }
  for name, data in files.items():
    (tmp_path / name).write_text(json.dumps(data))
  load = lambda name: client_lib.load_category_names(str(tmp_path / name))
  assert load('coco.json') == {3: 'cat'}
  assert load('list.json') == {1: 'a', 2: 'b'}
  assert load('ids.json') == {2: 'b'}
  assert load('export_config.json') == {1: 'a'}
  assert client_lib.load_category_names(['a']) == {1: 'a'}
  assert client_lib.load_category_names({5: 'x'}) == {5: 'x'}
  assert client_lib.load_category_names(None) == client_lib.load_category_names('') == {}
  assert client_lib.category_names_for_json(['a']) == {'1': 'a'}
  assert client_lib.category_names_for_json(None) is None
  (tmp_path / 'broken.json').write_text('{"1": ')
  for name, message in (
    ('no_names.json', 'names no categories'),
    ('missing.json', 'not exist'),
    ('broken.json', 'not valid JSON'),
    ('text.json', 'not a category names file'),
  ):
    with pytest.raises(ValueError, match=message):
      load(name)
  with pytest.raises(ValueError, match='not a category names file'):
    client_lib.load_category_names({'circle': 1})


if __name__ == '__main__':
  tf.test.main()

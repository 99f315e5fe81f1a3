"""Bad requests to the exports: a named problem, never raw bytes, and the model serves on.

The corpus (serving_error_corpus.py) goes through the three signatures of one exported
tiny detector and one exported tiny classifier (their decoding is shared, so the
expected problems are the same); after each refusal the same loaded model must answer a
good request with the same outputs as before. Thin but valid images must be served.
Then spinenet-predict's workflow and the client's helpers over a folder with bad files.

Both models have the minimal SpineNet and pyramid (minimal_model.MINIMAL_MODEL: one
intermediate block, P3-P5): the requests' decoding and checks are under test, not the
topology, and exporting (a trace of the model per signature) and each of the hundreds of
calls cost less with fewer blocks and levels.
"""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.serving import classification_export
from official_spinenet.serving import client_lib
from official_spinenet.serving import export_lib
from official_spinenet.workflows import predict
from tests import classification_export_fixtures
from tests import export_fixtures
from tests import serving_error_corpus as corpus
from tests.minimal_model import MINIMAL_MODEL

MAX_IMAGE_PIXELS = 300 * 400
BAD_REQUESTS = corpus.bad_requests(MAX_IMAGE_PIXELS)
MODELS = ('detector', 'classifier')
# An output per model type that a good request is compared on.
CHECKED_OUTPUT = {'detector': 'detection_scores', 'classifier': 'scores'}


def _export_detector(root):
  # The tiny test config's model with detector-like predictors (scale_predictors).
  model, _ = export_fixtures.make_checkpoint(str(root / 'model'), gin_params=MINIMAL_MODEL)
  return export_lib.export_saved_model(
    model,
    str(root / 'export'),
    (export_fixtures.INPUT_SIZE, export_fixtures.INPUT_SIZE),
    max_image_pixels=MAX_IMAGE_PIXELS,
    **export_fixtures.NMS_SETTINGS,
  )


def _export_classifier(root):
  params = classification_export_fixtures.GIN_PARAMS + MINIMAL_MODEL
  _, model, _, _ = classification_export_fixtures.make_checkpoint(root / 'model', params)
  size = classification_export_fixtures.INPUT_SIZE
  return classification_export.export_classifier(
    model,
    str(root / 'export'),
    (size, size),
    class_names=classification_export_fixtures.CLASS_NAMES,
    top_k=3,
    max_image_pixels=MAX_IMAGE_PIXELS,
  )


def _good_requests():
  png = corpus.good_png()
  return {
    'image_bytes': tf.constant([png]),
    'image_tensor': tf.constant(np.stack(export_fixtures.sample_images()[:1])),
    'tf_example': tf.constant([corpus.example(**{'image/encoded': png})]),
  }


def _call(loaded, signature, tensor):
  input_name = export_lib.SIGNATURE_INPUTS[signature][0]
  return {k: v.numpy() for k, v in loaded.signatures[signature](**{input_name: tensor}).items()}


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  """{model: (loaded SavedModel, {signature: outputs of the good request})}."""
  root = tmp_path_factory.mktemp('serving_errors')
  dirs = {
    'detector': _export_detector(root / 'detector'),
    'classifier': _export_classifier(root / 'classifier'),
  }
  result = {}
  for model, export_dir in dirs.items():
    loaded = tf.saved_model.load(export_dir)
    good = {sig: _call(loaded, sig, t) for sig, t in _good_requests().items()}
    result[model] = (loaded, good)
  return result


def _first_problem_line(message: str) -> str:
  """The first line of a TensorFlow error after its boilerplate header and node traces."""
  for line in message.splitlines():
    if line and not line.startswith(
      ('Graph execution error', 'Detected at node', '<stack traces unavailable>')
    ):
      return line
  return ''


@pytest.mark.parametrize('model', MODELS)
@pytest.mark.parametrize(
  'request_', BAD_REQUESTS, ids=[f'{r.signature}-{r.name}' for r in BAD_REQUESTS]
)
def test_bad_request_names_the_problem_and_the_model_serves_on(exports, model, request_):
  loaded, good = exports[model]
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    _call(loaded, request_.signature, request_.tensor())
  message = raised.value.message
  problem = client_lib.describe_error(raised.value)
  assert re.match(request_.problem, problem), (problem, message)
  # The problem is the first line after TensorFlow's header; the message is plain text
  # and holds none of the request's bytes.
  assert problem in _first_problem_line(message), message
  assert message.isascii(), message
  for data in request_.byte_strings():
    if len(data) >= 6:
      assert data[:12].decode('latin-1') not in message
  # The same loaded model answers a good request as before.
  key = CHECKED_OUTPUT[model]
  again = _call(loaded, request_.signature, _good_requests()[request_.signature])
  np.testing.assert_allclose(again[key], good[request_.signature][key], atol=1e-6)


def test_the_corpus_covers_the_kinds_of_bad_input():
  assert len(BAD_REQUESTS) >= 40
  names = {f'{r.signature}-{r.name}' for r in BAD_REQUESTS}
  assert len(names) == len(BAD_REQUESTS)
  for kind in ('gif', 'bmp', 'webp', 'tiff', 'heif', 'avif', 'random_bytes', 'non_utf8'):
    assert f'image_bytes-{kind}' in names
  assert {'tf_example-not_a_proto', 'tf_example-no_image', 'tf_example-gif'} <= names


@pytest.mark.parametrize('model', MODELS)
def test_thin_images_are_served(exports, model):
  loaded, _ = exports[model]
  images = corpus.thin_images()
  sizes = np.array(corpus.THIN_SIZES, np.float32)
  files = [corpus.encode(image, 'PNG') for image in images]
  outputs = [
    _call(loaded, 'image_bytes', tf.constant(files)),
    _call(
      loaded, 'tf_example', tf.constant([corpus.example(**{'image/encoded': f}) for f in files])
    ),
  ]
  outputs += [_call(loaded, 'image_tensor', tf.constant(image[None])) for image in images]
  outputs.append(_call(loaded, 'image_tensor', tf.zeros([1, 1, 2000, 3], tf.uint8)))
  for result in outputs:
    if model == 'classifier':
      assert np.all(np.isfinite(result['scores'])) and np.all(result['scores'].sum(-1) <= 1 + 1e-5)
      continue
    original = result['image_info'][:, 0]
    boxes = result['detection_boxes']
    assert np.all(np.isfinite(boxes)) and np.all(boxes >= 0)
    assert np.all(boxes[..., 2] <= original[:, None, 0])
    assert np.all(boxes[..., 3] <= original[:, None, 1])
  if model == 'detector':  # each image keeps its own size, however thin
    for result in outputs[:2]:
      np.testing.assert_array_equal(result['image_info'][:, 0], sizes)
    np.testing.assert_array_equal(outputs[-1]['image_info'][:, 0], [[1, 2000]])


def _folder_with_bad_files(root, good):
  """Good PNGs beside a GIF named .png, a BMP named .jpg, text and a truncated PNG."""
  folder = classification_export_fixtures.image_dir(root, good)
  image = corpus.thin_images()[-1]
  bad = {
    'a-gif.png': corpus.encode(image, 'GIF'),
    'b-bmp.jpg': corpus.encode(image, 'BMP'),
    'c-text.png': b'\x80\x81 not an image',
    'd-truncated.png': good[0][:50],
  }
  for name, data in bad.items():
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)
  return folder, {
    'a-gif.png': r'image_bytes\[\d\]: GIF is not supported; send JPEG or PNG$',
    'b-bmp.jpg': r'image_bytes\[\d\]: BMP is not supported',
    'c-text.png': r'image_bytes\[\d\]: not a JPEG or PNG file \(15 bytes, starting with 80 81',
    'd-truncated.png': r'image_bytes\[\d\]: the PNG could not be decoded',
  }


def test_predict_reports_bad_files_and_predicts_the_rest(exports, tmp_path, capsys):
  # The case: a GIF among PNGs stopped spinenet-predict with a UnicodeDecodeError.
  # (test_predict.py runs the binary on a GIF; here the loaded export is reused.)
  loaded = exports['detector'][0]

  def detect(encoded):
    outputs = _call(loaded, 'image_bytes', tf.constant(list(encoded)))
    return client_lib.detections_from_outputs(outputs)

  good = [export_fixtures.encode(image) for image in export_fixtures.sample_images()]
  folder, problems = _folder_with_bad_files(tmp_path / 'images', good)
  summary = predict.run_predict(
    predict.Predictor(detect, {}, 'the detector export'),
    [folder],
    str(tmp_path / 'out'),
    batch_size=4,
    show_progress=False,
  )
  failed = {os.path.basename(f['path']): f['error'] for f in summary['failed']}
  assert sorted(failed) == sorted(problems)
  for name, problem in problems.items():
    assert re.match(problem, failed[name]), failed[name]
  printed = capsys.readouterr().out
  for name in problems:
    assert re.search(rf'^FAILED \S*{re.escape(name)}: image_bytes\[\d\]: ', printed, re.M), printed
  # Every good image has its results, also those batched with bad ones.
  names = sorted(os.path.basename(e['path']) for e in summary['images'])
  assert names == ['0.png', '1.png', '2.png']
  assert json.load(open(summary['images_file']))['failed'] == summary['failed']
  assert os.path.exists(os.path.join(tmp_path, 'out', predict.DETECTIONS_FILE))


class _Refusing:
  """A predict function refusing any call that holds b'bad' (as a model refuses a batch)."""

  def __init__(self, error=ValueError):
    self.calls = []
    self._error = error

  def __call__(self, inputs):
    self.calls.append(list(inputs))
    if b'bad' in inputs:
      raise self._error(
        'Graph execution error:\n\nDetected at node x defined at (most recent '
        'call last):\n<stack traces unavailable>\nassertion failed: [image_bytes[1]: '
        'GIF is not supported; send JPEG or PNG]\n\t [[{{node x}}]] [Op:__inference_f_1]'
      )
    return [len(i) for i in inputs]


def test_predict_each_retries_a_refused_batch_one_by_one():
  refusing = _Refusing()
  outcomes = client_lib.predict_each(refusing, [b'good', b'bad', b'ok'])
  problem = 'image_bytes[1]: GIF is not supported; send JPEG or PNG'
  assert outcomes == [(4, None), (None, problem), (2, None)]
  assert refusing.calls == [[b'good', b'bad', b'ok'], [b'good'], [b'bad'], [b'ok']]
  # An error of the call itself (not of an input): no retries, every input fails.
  refusing = _Refusing(ConnectionRefusedError)
  outcomes = client_lib.predict_each(refusing, [b'good', b'bad'], retry_each=lambda e: False)
  assert outcomes == [(None, problem)] * 2 and len(refusing.calls) == 1


@pytest.mark.parametrize(
  'message, problem',
  [
    # A SavedModel called from Python (stack traces unavailable).
    (
      'Graph execution error:\n\nDetected at node map/while/Assert_1/Assert defined at (most '
      'recent call last):\n<stack traces unavailable>\nassertion failed: [tf_examples[0] '
      'image/encoded: GIF is not supported; send JPEG or PNG]\n\t [[{{node '
      'map/while/Assert_1/Assert}}]] [Op:__inference_signature_wrapper_8868]',
      'tf_examples[0] image/encoded: GIF is not supported; send JPEG or PNG',
    ),
    # A function traced in this process: Python frames between the header and the problem.
    (
      'Graph execution error:\n\nDetected at node Assert defined at (most recent call last):\n'
      '  File "/x/predict.py", line 3, in detect\n    outputs = signature(x)\n'
      'assertion failed: [image_bytes[2]: empty image bytes (0 bytes)]\n\t [[{{node Assert}}]]',
      'image_bytes[2]: empty image bytes (0 bytes)',
    ),
    # TF Serving's reply (REST "error", gRPC details).
    (
      'assertion failed: [image_bytes[0]: truncated PNG (20 bytes; the header alone needs 33)]'
      '\n\t [[{{function_node __inference_f_1}}{{node map/while/cond/Assert/Assert}}]]',
      'image_bytes[0]: truncated PNG (20 bytes; the header alone needs 33)',
    ),
    (
      '2 root error(s) found.\n  (0) INVALID_ARGUMENT: Shape of tensor images [8,8,3] is not '
      'compatible with expected shape [?,?,?,3].\n\t [[{{node EnsureShape}}]]\n0 successful '
      'operations.\n0 derived errors ignored.',
      'Shape of tensor images [8,8,3] is not compatible with expected shape [?,?,?,3].',
    ),
    (
      'cannot compute __inference_signature_wrapper_6684 as input #0(zero-based) was expected '
      'to be a uint8 tensor but is a float tensor [Op:__inference_signature_wrapper_6684]',
      'cannot compute __inference_signature_wrapper_6684 as input #0(zero-based) was expected '
      'to be a uint8 tensor but is a float tensor',
    ),
    ('Connection refused', 'Connection refused'),
  ],
)
def test_describe_error(message, problem):
  assert client_lib.describe_error(message) == problem
  assert client_lib.describe_error(RuntimeError(message)) == problem

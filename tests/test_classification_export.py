"""Classifier export: signatures, equality with the eval pipeline, names, errors, clients.

One tiny SpineNet classifier (classification_export_fixtures) is saved as a training
checkpoint and exported once per module by workflows.export (what spinenet-export runs).
"""

import io
import json
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.data import classification_input
from official_spinenet.serving import classification_export
from official_spinenet.serving import client_lib
from official_spinenet.serving import client_runner
from official_spinenet.serving import export_lib
from official_spinenet.workflows import export
from official_spinenet.workflows import predict
from tests import binaries
from tests import classification_export_fixtures as fixtures
from tests import export_fixtures

SIZE = fixtures.INPUT_SIZE
NAMES = fixtures.CLASS_NAMES
TOP_K = 3
KEYS = {'classes', 'scores', 'class_names'}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('classification_export')
  names_file = fixtures.write_class_names(root / 'labels.txt')
  params = fixtures.gin_params(names_file)
  task, model, _, prefix = fixtures.make_checkpoint(root / 'model', params)
  export_dir = export.export_from_checkpoint(
    [fixtures.GIN_FILE], params, prefix, str(root / 'export' / '1'), top_k=TOP_K
  )
  images = fixtures.sample_images()
  png = [export_fixtures.encode(image) for image in images]
  return {
    'root': root,
    'params': params,
    'task': task,
    'model': model,
    'prefix': prefix,
    'export_dir': export_dir,
    'loaded': tf.saved_model.load(export_dir),
    'images': images,
    'png': png,
    'image_dir': fixtures.image_dir(root / 'images', png),
  }


def _call(setup, signature, values):
  function = setup['loaded'].signatures[signature]
  input_name = export_lib.SIGNATURE_INPUTS.get(signature, ('image_bytes',))[0]
  values = np.stack(values) if signature == 'image_tensor' else values
  return {k: v.numpy() for k, v in function(**{input_name: tf.constant(values)}).items()}


def _examples(encoded):
  return [
    tf.train.Example(
      features=tf.train.Features(
        feature={'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[e]))}
      )
    ).SerializeToString()
    for e in encoded
  ]


def _reference_scores(model, images):
  """Softmax of the in-process model on preprocess_eval_image's output [B, classes]."""
  batch = tf.stack(
    [classification_input.preprocess_eval_image(tf.constant(i), (SIZE, SIZE)) for i in images]
  )
  return tf.nn.softmax(model(batch, training=False)).numpy()


def test_signatures_outputs_and_shapes(setup):
  count = len(setup['png'])
  calls = {
    'serving_default': setup['png'],
    'image_bytes': setup['png'],
    'tf_example': _examples(setup['png']),
  }
  results = {name: _call(setup, name, values) for name, values in calls.items()}
  results['image_tensor'] = _call(setup, 'image_tensor', setup['images'][:1])
  for name, outputs in results.items():
    batch = 1 if name == 'image_tensor' else count
    assert set(outputs) == KEYS, name
    assert outputs['classes'].shape == (batch, TOP_K) and outputs['classes'].dtype == np.int32
    assert outputs['scores'].shape == (batch, TOP_K) and outputs['scores'].dtype == np.float32
    assert outputs['class_names'].shape == (batch, TOP_K)
    # Best first; names are the labels.txt lines of the classes.
    assert np.all(np.diff(outputs['scores'], axis=1) <= 0)
    names = [[NAMES[c] for c in row] for row in outputs['classes']]
    assert [[n.decode() for n in row] for row in outputs['class_names']] == names
  for name in ('serving_default', 'tf_example'):
    np.testing.assert_allclose(results[name]['scores'], results['image_bytes']['scores'], atol=1e-6)
  np.testing.assert_allclose(
    results['image_tensor']['scores'], results['image_bytes']['scores'][:1], atol=1e-6
  )


def test_scores_equal_the_eval_pipeline(setup):
  # The eval input pipeline over records of the same PNGs (any sizes), batched.
  records = fixtures.write_records(setup['root'] / 'eval.tfrecord', setup['png'], [0, 1, 2])
  dataset = classification_input.build_classification_dataset(
    records, is_training=False, global_batch_size=3, image_size=(SIZE, SIZE), num_classes=4
  )
  images, _ = next(iter(dataset))
  want = tf.nn.softmax(setup['model'](images, training=False)).numpy()
  np.testing.assert_allclose(want, _reference_scores(setup['model'], setup['images']), atol=1e-5)
  outputs = _call(setup, 'image_bytes', setup['png'])
  for row, classes, scores in zip(want, outputs['classes'], outputs['scores']):
    np.testing.assert_allclose(scores, np.sort(row)[::-1][:TOP_K], atol=1e-5)
    np.testing.assert_allclose(row[classes], scores, atol=1e-5)
  # The head was sharpened: the scores are not a near-uniform tie.
  assert outputs['scores'][:, 0].max() > 0.5


def test_export_config(setup):
  config = export_lib.read_export_config(setup['export_dir'])
  assert classification_export.is_classification_export(config)
  assert config['class_names'] == NAMES and config['num_classes'] == 4
  assert config['options']['top_k'] == TOP_K
  assert config['options']['input_image_size'] == [SIZE, SIZE]
  assert config['outputs'] == ['classes', 'scores', 'class_names']
  assert config['extra_assets'] == [export.OPERATIVE_CONFIG_FILE]
  # category_names (0-based) make the file a label map for the client.
  assert client_lib.load_category_names(
    os.path.join(setup['export_dir'], export_lib.EXTRA_ASSETS_DIR, export_lib.EXPORT_CONFIG_FILE)
  ) == dict(enumerate(NAMES))
  operative = os.path.join(
    setup['export_dir'], export_lib.EXTRA_ASSETS_DIR, export.OPERATIVE_CONFIG_FILE
  )
  assert 'ClassificationTask.num_classes' in open(operative).read()


def test_bad_image_fails_with_a_clear_message(setup):
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _call(setup, 'image_bytes', [setup['png'][0], b'not an image'])
  assert client_lib.describe_error(error.value).startswith(
    'image_bytes[1]: not a JPEG or PNG file (12 bytes'
  )
  with pytest.raises(
    tf.errors.InvalidArgumentError, match=r'tf_examples\[0\]: the tf.Example has no'
  ):
    _call(setup, 'tf_example', [b''])


def test_serving_module_defaults_and_checks(setup):
  model = setup['model']
  config = classification_export.ClassificationExportConfig((SIZE, SIZE), top_k=4)
  module = classification_export.ClassificationServingModule(model, config)
  outputs = module.serve_image_bytes(tf.constant(setup['png'][:1]))
  assert {n.decode() for n in outputs['class_names'].numpy()[0]} == {f'class_{i}' for i in range(4)}
  np.testing.assert_allclose(
    outputs['scores'].numpy()[0].sum(), 1.0, atol=1e-5
  )  # top_k = num_classes: the whole distribution
  with pytest.raises(ValueError, match='top_k=5 is more than the model\'s 4 classes'):
    classification_export.ClassificationServingModule(
      model, classification_export.ClassificationExportConfig((SIZE, SIZE), top_k=5)
    )
  with pytest.raises(ValueError, match='3 class names in labels.txt for a model of 4 classes'):
    classification_export.check_class_names(NAMES[:3], 4, 'labels.txt')


def test_export_refuses_detection_options_and_vice_versa(setup, tmp_path):
  args = ([fixtures.GIN_FILE], setup['params'], setup['prefix'], str(tmp_path / 'x'))
  with pytest.raises(ValueError, match=r'--score_threshold, --noapply_nms: detection options.*'):
    export.export_from_checkpoint(*args, score_threshold=0.1, apply_nms=False)
  with pytest.raises(ValueError, match='--category_names_json: detection options'):
    export.export_from_checkpoint(*args, category_names=['a', 'b', 'c', 'd'])
  with pytest.raises(ValueError, match="top_k=7 is more than the model's 4 classes"):
    export.export_from_checkpoint(*args, top_k=7)
  with pytest.raises(ValueError, match='--top_k=2 is for classifiers; .* RetinaNetTask'):
    export.export_from_checkpoint([export_fixtures.TINY], [], setup['prefix'], args[3], top_k=2)
  assert not os.path.exists(args[3])


def test_rest_and_grpc_clients(setup):
  server = fixtures.TextFakeServing(_Asserts(), setup['loaded'])
  want = client_lib.classifications_from_outputs(_call(setup, 'image_bytes', setup['png']))
  for columnar in (False, True):
    body = client_lib.rest_predict_payload(setup['png'], 'image_bytes', columnar)
    parsed = client_lib.parse_rest_response(json.loads(server.rest(json.dumps(body))))
    _assert_same(parsed, want)
  request = client_lib.grpc_predict_request(setup['png'], 'cls', 'image_bytes')
  _assert_same(client_lib.parse_grpc_response(server.grpc(request)), want)
  assert client_lib.format_classification('a.png', want[0]).startswith(
    f'a.png: {want[0].class_names[0]} {want[0].scores[0]:.3f}, '
  )


def test_client_runner_prints_top_k(setup, tmp_path, capsys):
  server = fixtures.TextFakeServing(_Asserts(), setup['loaded'])

  def urlopen(request, timeout):
    del timeout
    return io.BytesIO(server.rest(request.data.decode()).encode())

  output_json = str(tmp_path / 'results.json')
  options = client_runner.ClientOptions(
    images=[setup['image_dir']], batch_size=2, output_json=output_json
  )
  with mock.patch('urllib.request.urlopen', side_effect=urlopen):
    results, failed = client_runner.run_client(options)
  assert failed == []
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 3 and printed[0].startswith(os.path.join(setup['image_dir'], '0.png: '))
  first = results[os.path.join(setup['image_dir'], '0.png')]
  assert set(first) == KEYS and len(first['scores']) == TOP_K
  assert json.load(open(output_json))['detections'] == results


def test_predict_with_the_export(setup, tmp_path):
  bad = tmp_path / 'bad'
  fixtures.image_dir(bad, [b'\x89PNG\r\n\x1a\ntruncated'], ['z-broken.png'])
  images = [setup['image_dir'], str(bad)]
  from_export = predict.predict(images, str(tmp_path / 'a'), saved_model=setup['export_dir'])
  with open(from_export['classifications_file']) as f:
    lines = [json.loads(line) for line in f]
  assert [os.path.basename(line['path']) for line in lines] == [
    '0.png',
    '1.png',
    '2.png',
    'z-broken.png',
  ]
  assert 'truncated PNG' in lines[-1]['error'] and from_export['failed'][0]['path'].endswith('.png')
  want = _call(setup, 'image_bytes', setup['png'])
  np.testing.assert_allclose([line['scores'] for line in lines[:3]], want['scores'], atol=1e-6)
  assert lines[0]['class_names'] == [n.decode() for n in want['class_names'][0]]


@pytest.mark.slow  # builds and traces the model once more
def test_predict_from_the_checkpoint(setup, tmp_path):
  # The task's top_k (4 = num_classes, capped) and names, the export's scores.
  want = _call(setup, 'image_bytes', setup['png'])
  from_checkpoint = predict.predict(
    [setup['image_dir']],
    str(tmp_path / 'b'),
    gin_files=[fixtures.GIN_FILE],
    gin_params=setup['params'],
    checkpoint=setup['prefix'],
  )
  entries = from_checkpoint['images']
  assert [len(e['classes']) for e in entries] == [4, 4, 4]
  np.testing.assert_allclose([e['scores'][:TOP_K] for e in entries], want['scores'], atol=1e-5)
  with pytest.raises(ValueError, match='--score_threshold: for detectors'):
    predict.checkpoint_predictor(
      [fixtures.GIN_FILE], setup['params'], setup['prefix'], score_threshold=0.2
    )


@pytest.mark.slow  # two subprocesses, each importing TensorFlow and loading the model
def test_export_and_predict_binaries(setup, tmp_path):
  export_dir = str(tmp_path / 'cls' / '1')
  gin = [f'--gin_file={fixtures.GIN_FILE}'] + [f'--gin_param={p}' for p in setup['params']]
  refused = binaries.run_binary(
    'export', *gin, f'--checkpoint={setup["prefix"]}', f'--export_dir={export_dir}',
    '--max_detections=5',
  )  # fmt: skip
  assert refused.returncode == 1 and '--max_detections: detection options' in refused.stderr
  done = binaries.run_binary(
    'export', *gin, f'--checkpoint={setup["prefix"]}', f'--export_dir={export_dir}', '--top_k=2'
  )
  assert done.returncode == 0, done.stderr
  assert export_lib.read_export_config(export_dir)['options']['top_k'] == 2
  run = binaries.run_binary(
    'predict', f'--saved_model={export_dir}', f'--images={setup["image_dir"]}',
    f'--output_dir={tmp_path / "out"}',
  )  # fmt: skip
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0].startswith(os.path.join(setup['image_dir'], '0.png: '))
  assert lines[0].count(', ') == 1  # two classes
  assert lines[-1].startswith('3 image(s) classified: ')
  assert os.path.exists(tmp_path / 'out' / predict.CLASSIFICATIONS_FILE)


class _Asserts:
  """The assertions FakeServing makes, outside a tf.test.TestCase."""

  def assertIn(self, member, container):  # noqa: N802
    assert member in container

  def assertCountEqual(self, first, second):  # noqa: N802
    assert sorted(first) == sorted(second)

  def assertEqual(self, first, second, message=None):  # noqa: N802
    assert first == second, message

  def assertTrue(self, value, message=None):  # noqa: N802
    assert value, message


def _assert_same(parsed, want):
  assert len(parsed) == len(want)
  for got, expected in zip(parsed, want):
    np.testing.assert_array_equal(got.classes, expected.classes)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)
    assert got.class_names == expected.class_names

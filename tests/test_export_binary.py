"""spinenet-export: gin + checkpoint -> SavedModel equal to the in-process model; errors.

The binary runs once as a subprocess (the console path: flags, gin, checkpoint,
export); the other cases call its functions in-process. The tiny test config's model
gets detector-like predictor weights (`scale_predictors`) and is saved as a training-style
checkpoint (`tf.train.Checkpoint(model=, backbone=, head=)` in a model dir). It runs with
the minimal SpineNet and pyramid (minimal_model.MINIMAL_MODEL: one intermediate block,
P3-P5): the export is checked, not the topology, and building and tracing the model (the
export traces it once per signature) scales with its blocks and pyramid levels.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.binaries import export as export_binary
from official_spinenet.data import shapes
from official_spinenet.serving import export_lib
from official_spinenet.serving import preprocessing
from official_spinenet.workflows import export
from official_spinenet.workflows import loading
from tests import binaries
from tests import export_fixtures
from tests.minimal_model import MINIMAL_MODEL

TINY = export_fixtures.TINY
NAMES = export_fixtures.NAMES
SETTINGS = export_fixtures.SETTINGS


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('model'))
  model, prefix = export_fixtures.make_checkpoint(model_dir, gin_params=MINIMAL_MODEL)
  return {'model': model, 'model_dir': model_dir, 'prefix': prefix}


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')


def test_binary_export_equals_in_process_model(tiny, tmp_path):
  names_file = tmp_path / 'names.json'
  names_file.write_text(json.dumps(NAMES))
  export_dir = str(tmp_path / 'export' / '1')
  result = binaries.run_binary(
    'export',
    f'--gin_file={TINY}',
    *[f'--gin_param={p}' for p in MINIMAL_MODEL],
    f'--checkpoint={tiny["model_dir"]}',
    f'--export_dir={export_dir}',
    '--score_threshold=0.05',
    '--max_detections=100',
    '--pre_nms_top_k=5000',
    '--max_image_pixels=120000',
    f'--category_names_json={names_file}',
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Exported a SavedModel to {export_dir}' in result.stdout

  config = export_lib.read_export_config(export_dir)
  assert config['options']['score_threshold'] == 0.05
  assert config['options']['max_image_pixels'] == 120000
  assert config['options']['input_image_size'] == [128, 128]
  assert config['category_names'] == {'1': 'circle', '2': 'square', '3': 'triangle', '4': 'cross'}
  with open(os.path.join(export_dir, 'assets.extra', 'operative_config.gin')) as f:
    operative = f.read()
  assert f'# Exported from checkpoint {tiny["prefix"]}' in operative
  assert 'spinenet.filter_size_scale = 0.125' in operative
  assert 'RetinaNetHead.num_filters = 16' in operative
  assert 'MAX_LEVEL = 5' in operative  # the --gin_param too

  loaded = tf.saved_model.load(export_dir)
  images = export_fixtures.sample_images()
  encoded = [
    export_fixtures.encode(images[0]),
    export_fixtures.encode(images[1], 'JPEG'),
    export_fixtures.encode(images[2]),
  ]
  served = loaded.signatures['image_bytes'](image_bytes=tf.constant(encoded))
  expected = export_fixtures.reference_detections(
    tiny['model'], [export_fixtures.decode(e) for e in encoded], **SETTINGS
  )
  assert expected['num_detections'].min() > 0  # the weights make it detect things
  export_fixtures.assert_same_detections(tf.test.TestCase(), served, expected)


def test_options_default_to_the_task_and_reach_the_export(tiny, tmp_path, monkeypatch):
  """What export_from_checkpoint hands export_saved_model (no model is built here)."""
  calls = []
  monkeypatch.setattr(
    loading,
    'build_and_restore',
    lambda task, path, files, params: loading.LoadedModel(task, 'the model', path, '# operative'),
  )
  monkeypatch.setattr(
    export_lib,
    'export_saved_model',
    lambda *args, **kwargs: calls.append((args, kwargs)) or args[1],
  )
  export.export_from_checkpoint(
    [TINY],
    ['RetinaNetTask.max_num_detections = 7'],
    tiny['prefix'] + '.index',
    str(tmp_path / 'raw'),
    apply_nms=False,
    batch_size=2,
    category_names=NAMES,
  )
  (model, export_dir, input_size), options = calls[0]
  assert (model, export_dir, input_size) == ('the model', str(tmp_path / 'raw'), (128, 128))
  assert options == dict(
    score_threshold=0.05,
    max_detections=7,
    nms_iou_threshold=0.5,
    pre_nms_top_k=5000,
    apply_nms=False,
    max_image_pixels=preprocessing.DEFAULT_MAX_IMAGE_PIXELS,
    batch_size=2,
    extra_assets={'operative_config.gin': '# operative'},
    category_names={1: 'circle', 2: 'square', 3: 'triangle', 4: 'cross'},
    overwrite=False,
  )


def _raises(match, **overrides):
  arguments = dict(gin_files=[TINY], gin_params=[], checkpoint=None, export_dir=None)
  arguments.update(overrides)
  with pytest.raises((ValueError, FileExistsError), match=match):
    export.export_from_checkpoint(
      arguments.pop('gin_files'),
      arguments.pop('gin_params'),
      arguments.pop('checkpoint'),
      arguments.pop('export_dir'),
      **arguments,
    )


def test_errors_before_the_model_is_built(tiny, tmp_path, monkeypatch):
  # Building a model here would be a bug: every case fails on a cheap check.
  def no_build(*args, **kwargs):
    raise AssertionError('the model was built')

  monkeypatch.setattr(loading, 'build_and_restore', no_build)
  out = str(tmp_path / 'out')
  ok = dict(checkpoint=tiny['model_dir'], export_dir=out)
  _raises('modl_id', gin_params=["spinenet.modl_id = '96'"], **ok)
  _raises('Unknown|No configurable', gin_params=['RetinaNetTsk.num_classes = 3'], **ok)
  _raises('at least one --gin_file', gin_files=[], **ok)
  _raises(r'no checkpoint in directory', checkpoint=str(tmp_path), export_dir=out)
  _raises(
    r'no checkpoint at .*ckpt-9',
    checkpoint=os.path.join(tiny['model_dir'], 'ckpt-9'),
    export_dir=out,
  )
  _raises('No checkpoint given', checkpoint='', export_dir=out)
  _raises(r'score_threshold must be in \[0, 1\]', score_threshold=1.5, **ok)
  _raises('max_detections must be >= 1', max_detections=0, **ok)
  _raises('ids \\[5\\]', category_names={5: 'five'}, **ok)
  names = tmp_path / 'bad_names.json'
  names.write_text('{"circle": 1}')
  _raises('not a category names file', category_names=str(names), **ok)
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'x').write_text('x')
  _raises(
    'not empty; pass --overwrite', checkpoint=tiny['model_dir'], export_dir=str(tmp_path / 'full')
  )
  assert not os.path.exists(out)


def test_checkpoint_that_does_not_fit(tiny):
  with pytest.raises(ValueError, match=r'does not fit the model .*shape'):
    loading.load_model([TINY], MINIMAL_MODEL + ['RetinaNetHead.num_filters = 8'], tiny['model_dir'])


def test_checkpoint_of_parts_and_foreign_checkpoints(tiny, tmp_path):
  model = tiny['model']
  parts = tf.train.Checkpoint(backbone=model.backbone, head=model.head).write(
    str(tmp_path / 'parts' / 'converted')
  )
  loaded = loading.load_model([TINY], MINIMAL_MODEL, parts)
  for ours, theirs in zip(loaded.model.variables, model.variables):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  foreign = tf.train.Checkpoint(net=model.head).write(str(tmp_path / 'foreign' / 'x'))
  with pytest.raises(ValueError, match=r"holds \['net'\]: neither a whole 'model'"):
    loading.restore_weights(foreign, {'model': None, 'backbone': None, 'head': None})


def test_binary_flags(tmp_path, monkeypatch):
  values = flags.FlagValues()
  monkeypatch.setattr(export_binary, 'FLAGS', values)
  export_binary.define_flags(values)
  values(['spinenet-export', f'--checkpoint={tmp_path}', f'--export_dir={tmp_path}/e'])
  with pytest.raises(app.UsageError, match='at least one --gin_file'):
    export_binary.main(['spinenet-export'])
  values.gin_file = [TINY]
  with pytest.raises(app.UsageError, match='no checkpoint in directory'):
    export_binary.main(['spinenet-export'])
  with pytest.raises(app.UsageError, match='Unexpected positional'):
    export_binary.main(['spinenet-export', 'extra'])
  with pytest.raises(flags.IllegalFlagValueError):
    values(['spinenet-export', '--max_detections=many'])


@pytest.mark.slow
def test_export_of_a_trained_checkpoint(tmp_path):
  """A real spinenet-train checkpoint (with optimizer state) exports and restores."""
  from official_spinenet.workflows import train  # pylint: disable=g-import-not-at-top

  data = shapes.make_shapes_dataset(
    str(tmp_path / 'data'),
    num_train=4,
    num_val=0,
    image_size=128,
    seed=0,
    num_shards=1,
    show_progress=False,
  )
  model_dir = str(tmp_path / 'model')
  train.launch(
    [TINY],
    [f"TRAIN_FILE_PATTERN = '{data['train']['tfrecord_pattern']}'", 'TRAIN_STEPS = 2']
    + MINIMAL_MODEL,
    model_dir,
    mode='train',
  )
  loaded = loading.load_model([TINY], MINIMAL_MODEL, model_dir)
  assert loaded.checkpoint_path.endswith('ckpt-2')
  reader = tf.train.load_checkpoint(loaded.checkpoint_path)
  kernel = loaded.model.head._classifier.kernel  # pylint: disable=protected-access
  names = [
    n
    for n, shape in tf.train.list_variables(loaded.checkpoint_path)
    if n.endswith('_classifier/kernel/.ATTRIBUTES/VARIABLE_VALUE')
  ]
  assert names
  np.testing.assert_array_equal(reader.get_tensor(names[0]), kernel.numpy())
  export_dir = export.export_from_checkpoint([TINY], MINIMAL_MODEL, model_dir, str(tmp_path / 'e'))
  assert tf.saved_model.contains_saved_model(export_dir)

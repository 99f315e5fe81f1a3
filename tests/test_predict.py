"""spinenet-predict: COCO results, drawings, bad images, from a SavedModel or a checkpoint."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
from pycocotools import coco as coco_lib
import pytest

from official_spinenet.data import shapes
from official_spinenet.workflows import export
from official_spinenet.workflows import predict
from tests import export_fixtures

TINY = export_fixtures.TINY


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict')
  data = shapes.make_shapes_dataset(
    str(root / 'data'),
    num_train=1,
    num_val=5,
    image_size=128,
    seed=3,
    num_shards=1,
    show_progress=False,
  )
  _, prefix = export_fixtures.make_checkpoint(str(root / 'model'))
  saved_model = export.export_from_checkpoint(
    [TINY], [], prefix, str(root / 'export'), category_names=export_fixtures.NAMES
  )
  images = str(root / 'images')
  shutil.copytree(data['val']['image_dir'], images)
  # One image at another size, as a JPEG: boxes must come back in its own pixels.
  first = sorted(os.listdir(images))[0]
  Image.open(os.path.join(images, first)).resize((200, 150)).save(
    os.path.join(images, 'resized.jpg'), quality=95
  )
  return {
    'root': root,
    'prefix': prefix,
    'saved_model': saved_model,
    'images': images,
    'val_dir': data['val']['image_dir'],
    'annotation_file': data['val']['annotation_file'],
  }


def _run(predictor, setup, output_dir, **kwargs):
  return predict.run_predict(
    predictor, [setup['images']], str(output_dir), show_progress=False, **kwargs
  )


def test_saved_model_and_checkpoint_give_the_same_results(setup, tmp_path):
  from_export = _run(
    predict.saved_model_predictor(setup['saved_model']), setup, tmp_path / 'export'
  )
  from_checkpoint = _run(
    predict.checkpoint_predictor([TINY], [], setup['prefix']), setup, tmp_path / 'checkpoint'
  )
  assert len(from_export['images']) == 6 and not from_export['failed']
  assert from_export['num_detections'] > 0
  resized = {e['file_name']: e for e in from_export['images']}['resized.jpg']
  assert (resized['height'], resized['width']) == (150, 200)
  one, two = (json.load(open(r['detections_file'])) for r in (from_export, from_checkpoint))
  assert [(d['image_id'], d['category_id']) for d in one] == [
    (d['image_id'], d['category_id']) for d in two
  ]
  np.testing.assert_allclose(
    [d['bbox'] + [d['score']] for d in one], [d['bbox'] + [d['score']] for d in two], atol=1e-3
  )
  # The export's class names reach images.json; the checkpoint has none of its own.
  names = json.load(open(from_export['images_file']))['categories']
  assert names == [{'id': i + 1, 'name': n} for i, n in enumerate(export_fixtures.NAMES)]


def test_results_are_coco_and_drawings_are_the_images(setup, tmp_path):
  summary = predict.run_predict(
    predict.saved_model_predictor(setup['saved_model']),
    [setup['val_dir']],
    str(tmp_path),
    annotation_file=setup['annotation_file'],
    draw_min_score=0.0,
    show_progress=False,
  )
  ground_truth = coco_lib.COCO(setup['annotation_file'])
  results = ground_truth.loadRes(summary['detections_file'])  # pycocotools reads it
  # Image ids are the annotation file's, matched by file name.
  assert sorted(e['id'] for e in summary['images']) == sorted(ground_truth.getImgIds())
  for entry in summary['images']:
    height, width = (ground_truth.imgs[entry['id']][k] for k in ('height', 'width'))
    assert (entry['height'], entry['width']) == (height, width)
    boxes = np.array(
      [a['bbox'] for a in results.dataset['annotations'] if a['image_id'] == entry['id']]
    ).reshape([-1, 4])
    assert (boxes[:, 0] >= -1e-3).all() and (boxes[:, 0] + boxes[:, 2] <= width + 1e-3).all()
    assert (boxes[:, 1] >= -1e-3).all() and (boxes[:, 1] + boxes[:, 3] <= height + 1e-3).all()
  for entry in summary['images']:
    drawing = Image.open(os.path.join(tmp_path, entry['drawing']))
    assert drawing.format == 'PNG' and drawing.size == (entry['width'], entry['height'])
  # Drawn boxes change pixels.
  first = summary['images'][0]
  original = np.asarray(Image.open(os.path.join(setup['val_dir'], first['file_name'])))
  drawn = np.asarray(Image.open(os.path.join(tmp_path, first['drawing'])).convert('RGB'))
  assert (np.abs(drawn.astype(int) - original[..., :3]).max(axis=-1) > 60).mean() > 0.01
  assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]  # written atomically


def test_bad_images_are_reported_and_the_rest_carry_on(setup, tmp_path):
  images = tmp_path / 'mixed'
  shutil.copytree(setup['images'], images)
  (images / 'empty.png').write_bytes(b'')
  (images / 'text.jpg').write_bytes(b'not an image at all')
  buffer = io.BytesIO()
  Image.new('RGB', (64, 64)).save(buffer, format='PNG')
  (images / 'truncated.png').write_bytes(buffer.getvalue()[:40])
  summary = predict.run_predict(
    predict.saved_model_predictor(setup['saved_model']),
    [str(images)],
    str(tmp_path / 'out'),
    batch_size=4,
    show_progress=False,
  )
  failed = {os.path.basename(f['path']): f['error'] for f in summary['failed']}
  assert sorted(failed) == ['empty.png', 'text.jpg', 'truncated.png']
  assert 'empty' in failed['empty.png'] and 'not a JPEG or PNG' in failed['text.jpg']
  assert len(summary['images']) == 6  # every good image, also those batched with bad ones
  # One image per call: a bad one is reported too, not raised.
  summary = predict.run_predict(
    predict.saved_model_predictor(setup['saved_model']),
    [str(images / 'text.jpg')],
    str(tmp_path / 'one'),
    batch_size=1,
    show_progress=False,
  )
  assert [os.path.basename(f['path']) for f in summary['failed']] == ['text.jpg']


def test_errors_name_the_problem(setup, tmp_path):
  with pytest.raises(ValueError, match='No image files found for: .*nothing-here'):
    predict.run_predict(
      predict.Predictor(None, {}, 'unused'), [str(tmp_path / 'nothing-here')], str(tmp_path)
    )
  with pytest.raises(ValueError, match='holds no SavedModel'):
    predict.saved_model_predictor(str(tmp_path))
  with pytest.raises(ValueError, match='no unique entry in --annotation_file'):
    predict.assign_image_ids(
      ['/x/unknown.png'], predict.coco_tfrecord.load_coco_instances(setup['annotation_file'])
    )


def test_binary(setup, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  command = [sys.executable, '-m', 'official_spinenet.binaries.predict']
  # A GIF among the images (named .png): reported, the others predicted, exit status 1.
  images = tmp_path / 'images'
  shutil.copytree(setup['images'], images)
  Image.new('RGB', (32, 16)).save(images / 'a-gif.png', format='GIF')
  run = subprocess.run(
    command
    + [
      f'--saved_model={setup["saved_model"]}',
      f'--images={images}',
      f'--output_dir={tmp_path}',
      '--batch_size=4',
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert run.returncode == 1, run.stderr[-3000:]
  assert '6 image(s)' in run.stdout
  failed = r'^FAILED \S*a-gif.png: image_bytes\[0\]: GIF is not supported; send JPEG or PNG$'
  assert re.search(failed, run.stdout, re.M), run.stdout
  assert '1 image(s) failed' in run.stderr and 'UnicodeDecodeError' not in run.stderr
  assert os.path.exists(tmp_path / predict.DETECTIONS_FILE)
  # NMS options are fixed in an export: combining them is a usage error, before loading.
  run = subprocess.run(
    command
    + [
      f'--saved_model={setup["saved_model"]}',
      '--score_threshold=0.5',
      f'--images={setup["images"]}',
      f'--output_dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert run.returncode == 1 and '--score_threshold' in run.stderr

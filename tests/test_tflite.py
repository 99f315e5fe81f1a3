"""TFLite export of a tiny SpineNet-Mobile RetinaNet: the interpreter's detections.

The model is gin_configs/retinanet/spinenet_mobile49_384.gin at 128 px with narrow
widths, with detector-like predictor weights (export_fixtures.scale_predictors),
saved as a checkpoint and converted by workflows/tflite.py (spinenet-export-tflite), so
the post-processing is TFLite's own TFLite_Detection_PostProcess op run by the pip
LiteRT interpreter. Its detections are compared with the in-process model run through
the SavedModel's serving module (the same code the SavedModel runs; the slow test
compares with a written SavedModel and adds int8).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet.data import shapes
from official_spinenet.serving import export_lib
from official_spinenet.serving import tflite_export
from official_spinenet.workflows import loading
from official_spinenet.workflows import tflite
from tests import export_fixtures

GIN = ['retinanet/spinenet_mobile49_384.gin']
PARAMS = [
  'IMAGE_SIZE = 128',
  'NUM_CLASSES = 5',
  'spinenet_mobile.filter_size_scale = 0.25',
  'spinenet_mobile.endpoints_num_filters = 16',
  'spinenet_mobile.use_sync_bn = False',
  'RetinaNetHead.num_filters = 16',
  'RetinaNetHead.num_convs = 1',
  'RetinaNetHead.use_sync_bn = False',
]
NAMES = [c['name'] for c in shapes.CATEGORIES]
# Float TFLite vs TensorFlow on the same image: the app-side input is rounded to uint8
# after resizing (exact for images that need no resize), kernels differ (XNNPACK).
SCORE_TOL = 0.01
BOX_TOL = 1.0  # pixels
COMPARED_SCORE = 0.3  # detections at least this good must be found on both sides


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp('tflite')
  model, prefix = export_fixtures.make_checkpoint(str(root / 'model'), GIN, PARAMS)
  path = tflite.export_tflite_from_checkpoint(
    GIN, PARAMS, prefix, str(root / 'float.tflite'), category_names=NAMES
  )
  serving = export_lib.DetectionServingModule(
    model, export_lib.ExportConfig(input_image_size=(128, 128))
  )
  return {'root': root, 'model': model, 'prefix': prefix, 'path': path, 'serving': serving}


def _in_process(serving, image):
  outputs = serving.serve_images(tf.constant(image[None]))
  return tf.nest.map_structure(lambda t: t.numpy(), outputs)


def _as_rows(boxes, scores, classes):
  return np.concatenate([boxes, scores[:, None], classes[:, None]], axis=1)


def _inside(rows, height, width, margin=1.0):
  """Rows whose box keeps `margin` pixels from the image border."""
  keep = (
    (rows[:, 0] >= margin)
    & (rows[:, 1] >= margin)
    & (rows[:, 2] <= height - margin)
    & (rows[:, 3] <= width - margin)
  )
  return rows[keep]


def assert_close_detections(
  tflite, reference, image_size, score_tol=SCORE_TOL, box_tol=BOX_TOL, min_score=COMPARED_SCORE
):
  """Every detection scoring >= min_score on one side is on the other: same class, box
  within box_tol pixels, score within score_tol.

  Boxes at the image border are left out: TensorFlow clips the decoded boxes to the
  image before NMS (Model Garden's generator), TFLite's op does not (they are
  clipped after it), so NMS can keep different ones of two boxes crossing the border.
  So are detections within score_tol of the lowest score of a side that kept
  max_detections: the scores differ by up to score_tol, so which of them make the
  cut differs.
  """
  count = int(reference['num_detections'][0])
  ours = _as_rows(tflite.boxes, tflite.scores, tflite.classes.astype(np.float32))
  theirs = _as_rows(
    reference['detection_boxes'][0, :count],
    reference['detection_scores'][0, :count],
    reference['detection_classes'][0, :count].astype(np.float32),
  )
  max_detections = reference['detection_scores'].shape[1]
  compared = 0
  for side, other, name in ((ours, theirs, 'TFLite'), (theirs, ours, 'TensorFlow')):
    floor = min_score
    if len(other) == max_detections:
      floor = max(floor, other[:, 4].min() + score_tol)
    for row in _inside(side[side[:, 4] >= floor], *image_size):
      near = [
        o
        for o in other
        if o[5] == row[5]
        and abs(o[4] - row[4]) <= score_tol
        and np.abs(o[:4] - row[:4]).max() <= box_tol
      ]
      assert near, f'{name} detection {row} (box, score, class) has no counterpart'
      compared += 1
  assert compared >= 4, f'only {compared} detections compared'


def test_model_file_and_description(exported):
  with open(exported['path'], 'rb') as f:
    content = f.read()
  assert tflite_export.POSTPROCESS_OP.encode() in content  # the op, not raw anchors
  detector = tflite_export.TFLiteDetector(exported['path'])
  runner = detector._runner  # pylint: disable=protected-access
  inputs = runner.get_input_details()
  assert list(inputs) == ['images']
  assert inputs['images']['dtype'] == np.uint8
  assert list(inputs['images']['shape']) == [1, 128, 128, 3]
  assert sorted(runner.get_output_details()) == sorted(tflite_export.OUTPUT_KEYS)
  outputs = detector.run(np.zeros([1, 128, 128, 3], np.uint8))
  assert outputs['detection_boxes'].shape == (1, 100, 4)
  assert outputs['detection_scores'].shape == outputs['detection_classes'].shape == (1, 100)
  assert outputs['num_detections'].shape == (1,)
  with open(exported['path'] + '.json') as f:
    description = json.load(f)
  assert description['input']['pad_value_rgb'] == [124, 116, 104]
  assert description['options']['quantization'] == 'float'
  assert description['options']['score_threshold'] == 0.05  # the task's, by default
  assert description['nms'] == 'per-class'
  assert description['category_names']['1'] == 'circle'
  assert detector.input_image_size == [128, 128]


def test_float_detections_match_the_in_process_model(exported):
  detector = tflite_export.TFLiteDetector(exported['path'])
  for image in export_fixtures.sample_images():  # 96x128, 128x80 (padded), 150x200 (resized)
    tflite = detector.detect(image)
    reference = _in_process(exported['serving'], image)
    assert int(reference['num_detections'][0]) == len(tflite.scores) == 100
    assert tflite.classes.min() >= 1 and tflite.classes.max() <= 4  # never background
    np.testing.assert_array_equal(tflite.image_size, image.shape[:2])
    assert_close_detections(tflite, reference, image.shape[:2])
    # The best detection is the same one.
    np.testing.assert_allclose(
      tflite.scores[0], reference['detection_scores'][0, 0], atol=SCORE_TOL
    )
    assert tflite.classes[0] == reference['detection_classes'][0, 0]


def test_prepare_input_pads_with_the_mean_pixel():
  image = export_fixtures.sample_images([(96, 128)])[0]
  prepared, image_info = tflite_export.prepare_input(image, (128, 128), (128, 128))
  assert prepared.dtype == np.uint8 and prepared.shape == (1, 128, 128, 3)
  np.testing.assert_array_equal(prepared[0, :96], image)  # scale 1: the pixels themselves
  np.testing.assert_array_equal(
    prepared[0, 96:], np.broadcast_to(np.array(tflite_export.PAD_VALUE_RGB, np.uint8), (32, 128, 3))
  )
  np.testing.assert_allclose(image_info, [[96, 128], [128, 128], [1, 1], [0, 0]])


def test_options_are_checked_before_the_model_is_built(exported, tmp_path, monkeypatch):
  def no_build(*args, **kwargs):
    raise AssertionError('the model was built')

  monkeypatch.setattr(loading, 'build_and_restore', no_build)
  prefix = exported['prefix']
  out = str(tmp_path / 'x.tflite')
  with pytest.raises(ValueError, match=r'score_threshold must be in \(0, 1\]'):
    tflite.export_tflite_from_checkpoint(GIN, PARAMS, prefix, out, score_threshold=0.0)
  with pytest.raises(ValueError, match='quantization must be one of'):
    tflite.export_tflite_from_checkpoint(GIN, PARAMS, prefix, out, quantization='int4')
  with pytest.raises(ValueError, match='needs --representative_data'):
    tflite.export_tflite_from_checkpoint(GIN, PARAMS, prefix, out, quantization='int8')
  with pytest.raises(ValueError, match='No files match'):
    tflite.export_tflite_from_checkpoint(
      GIN, PARAMS, prefix, out, quantization='int8', representative_data=str(tmp_path / 'none-*')
    )
  with pytest.raises(ValueError, match='for --quantization=int8 only'):
    tflite.export_tflite_from_checkpoint(GIN, PARAMS, prefix, out, representative_data='x')
  with pytest.raises(FileExistsError, match='pass --overwrite'):
    tflite.export_tflite_from_checkpoint(GIN, PARAMS, prefix, exported['path'])
  with pytest.raises(ValueError, match='no checkpoint at'):
    tflite.export_tflite_from_checkpoint(GIN, PARAMS, prefix + '0', out)
  assert not os.path.exists(out)


@pytest.mark.slow
def test_int8_and_class_agnostic_and_the_saved_model(exported, tmp_path):
  """int8 (calibrated on TFRecords) runs and agrees; class-agnostic NMS; SavedModel."""
  data = shapes.make_shapes_dataset(
    str(tmp_path / 'data'),
    num_train=16,
    num_val=0,
    image_size=128,
    seed=0,
    num_shards=1,
    show_progress=False,
  )
  int8_path = tflite.export_tflite_from_checkpoint(
    GIN,
    PARAMS,
    exported['prefix'],
    str(tmp_path / 'int8.tflite'),
    quantization='int8',
    representative_data=data['train']['tfrecord_pattern'],
    num_calibration_images=16,
  )
  agnostic_path = tflite.export_tflite_from_checkpoint(
    GIN, PARAMS, exported['prefix'], str(tmp_path / 'agnostic.tflite'), use_regular_nms=False
  )
  saved_model = tf.saved_model.load(
    export_lib.export_saved_model(exported['model'], str(tmp_path / 'saved_model'), (128, 128))
  )
  float_detector = tflite_export.TFLiteDetector(exported['path'])
  int8_detector = tflite_export.TFLiteDetector(int8_path)
  # The convolutions run in int8: weights (4-d) stored as int8, none in the float model.
  # (File sizes say little for a model this narrow: the constants of the
  # post-processing and the float fallback dominate.)
  int8_weights = lambda d: [
    t
    for t in d._interpreter.get_tensor_details()  # pylint: disable=protected-access
    if len(t['shape']) == 4 and t['dtype'] == np.int8
  ]
  assert len(int8_weights(int8_detector)) >= 10
  assert not int8_weights(float_detector)
  agnostic_detector = tflite_export.TFLiteDetector(agnostic_path)
  matched_scores = []
  for image in export_fixtures.sample_images():
    reference = tf.nest.map_structure(
      lambda t: t.numpy(), saved_model.signatures['image_tensor'](images=image[None])
    )
    assert_close_detections(float_detector.detect(image), reference, image.shape[:2])

    int8 = int8_detector.detect(image)
    assert len(int8.scores) > 0
    height, width = image.shape[:2]
    assert (int8.boxes[:, 0] <= int8.boxes[:, 2]).all()
    assert (int8.boxes[:, 1] <= int8.boxes[:, 3]).all()
    assert int8.boxes.min() >= 0 and int8.boxes[:, 2].max() <= height
    assert int8.boxes[:, 3].max() <= width
    assert set(int8.classes.tolist()) <= {1, 2, 3, 4}
    count = int(reference['num_detections'][0])
    for box, score, cls in zip(int8.boxes[:20], int8.scores[:20], int8.classes[:20]):
      ious = _iou(box, reference['detection_boxes'][0, :count])
      same = (reference['detection_classes'][0, :count] == cls) & (ious > 0.7)
      if same.any():
        matched_scores.append((score, reference['detection_scores'][0, :count][same].max()))

    agnostic = agnostic_detector.detect(image)
    # Class-agnostic NMS: no two kept boxes overlap more than the IoU threshold. Boxes
    # at the border are left out: the op runs NMS on unclipped boxes, and clipping
    # afterwards can raise their overlap.
    inside = _inside(np.asarray(agnostic.boxes), height, width)
    assert len(inside) >= 5
    for i in range(len(inside)):
      assert (_iou(inside[i], inside[i + 1 :]) <= 0.5 + 1e-4).all()
    assert agnostic.classes[0] == reference['detection_classes'][0, 0]
    np.testing.assert_allclose(
      agnostic.scores[0], reference['detection_scores'][0, 0], atol=SCORE_TOL
    )
  matched_scores = np.array(matched_scores)
  assert len(matched_scores) >= 30, len(matched_scores)
  assert np.corrcoef(matched_scores.T)[0, 1] > 0.8, matched_scores


def _iou(box, boxes):
  boxes = np.reshape(boxes, [-1, 4])
  ymin = np.maximum(box[0], boxes[:, 0])
  xmin = np.maximum(box[1], boxes[:, 1])
  ymax = np.minimum(box[2], boxes[:, 2])
  xmax = np.minimum(box[3], boxes[:, 3])
  intersection = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return intersection / np.maximum(area(box) + area(boxes) - intersection, 1e-9)

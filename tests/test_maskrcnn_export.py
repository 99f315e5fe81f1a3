"""Mask R-CNN export and serving: masks equal the in-process model's, RLE results, drawings.

One tiny Mask R-CNN checkpoint (fresh weights, class and mask predictors sharpened so
that scores and mask cells do not tie) is exported twice per run: through
spinenet-export's workflow with the default crop masks, and with masks pasted in the
graph. The pasted masks are checked against Model Garden's numpy
`mask_ops.paste_instance_masks` as an independent reference.

The model has the minimal SpineNet and pyramid (minimal_model.MINIMAL_MODEL: one
intermediate block, P3-P5): building, tracing, exporting and loading it scale with its
blocks and levels, and these tests are about export and serving, not the topology.
"""

import io
import json
import os
import tempfile
from unittest import mock

import numpy as np
from PIL import Image
from pycocotools import coco as coco_lib
from pycocotools import cocoeval
from pycocotools import mask as mask_api
import pytest
import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.data import shapes
from official_spinenet.data import tfexample
from official_spinenet.serving import client_lib
from official_spinenet.serving import client_runner
from official_spinenet.serving import export_lib
from official_spinenet.serving import postprocessing
from official_spinenet.workflows import export
from official_spinenet.workflows import predict
from tests import export_fixtures
from tests.minimal_model import MINIMAL_MODEL

MASKRCNN = export_fixtures.MASKRCNN_TINY
INPUT_SIZE = export_fixtures.INPUT_SIZE
MAX_IMAGE_PIXELS = 300 * 400
MASK_ATOL = 1e-4
# Pixels whose bilinear mask value is within float rounding of 0.5 may differ from
# the numpy paste (2 in 6.8 million on random masks); allow a few per thousand.
MAX_PASTE_MISMATCH = 2e-3


def _tf_example(encoded: bytes, height: int, width: int) -> bytes:
  return tfexample.make_detection_example(
    encoded_image=encoded,
    image_format='png',
    height=height,
    width=width,
    source_id=1,
    boxes=np.zeros([0, 4]),
    classes=[],
  ).SerializeToString()


def _reference_paste(masks, boxes, image_size) -> np.ndarray:
  """Model Garden's numpy Detectron paste of crop masks [N, m, m] at boxes [N, 4] (y1x1y2x2)."""
  boxes = np.asarray(boxes, np.float64)
  xywh = np.stack(
    [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1
  )
  return model_garden.load('mask_ops').paste_instance_masks(masks, xywh, *image_size)


class MaskRCNNExportTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = cls.enterClassContext(tempfile.TemporaryDirectory())
    data_dir = os.path.join(root, 'data')
    cls.data = shapes.make_shapes_dataset(data_dir, 1, 4, seed=5, show_progress=False)
    cls.model, cls.checkpoint = export_fixtures.make_checkpoint(
      os.path.join(root, 'model'),
      gin_files=(MASKRCNN,),
      gin_params=MINIMAL_MODEL,
      prepare=export_fixtures.scale_maskrcnn_predictors,
    )
    cls.crop_dir = export.export_from_checkpoint(
      [MASKRCNN],
      MINIMAL_MODEL,
      cls.checkpoint,
      os.path.join(root, 'crop', '1'),
      max_image_pixels=MAX_IMAGE_PIXELS,
      category_names=export_fixtures.NAMES,
    )
    cls.pasted_dir = export_lib.export_saved_model(
      cls.model, os.path.join(root, 'pasted', '1'), (INPUT_SIZE, INPUT_SIZE), mask_output='pasted'
    )
    cls.crop = tf.saved_model.load(cls.crop_dir)
    cls.pasted = tf.saved_model.load(cls.pasted_dir)
    cls.images = export_fixtures.sample_images()
    cls.png = [export_fixtures.encode(image) for image in cls.images]
    cls.expected = export_fixtures.maskrcnn_reference(cls.model, cls.images)

  def setUp(self):
    self._set_default_seed = False  # seeding clears the signatures' compiled kernels
    super().setUp()

  def _serve(self, loaded, signature, values):
    input_name = export_lib.SIGNATURE_INPUTS[signature][0]
    outputs = loaded.signatures[signature](**{input_name: tf.constant(values)})
    return {k: v.numpy() for k, v in outputs.items()}

  def _expected(self, indices):
    return {k: v[list(indices)] for k, v in self.expected.items()}

  def _assert_same(self, served, expected):
    """Same detections as `expected` and, matched one to one, the same crop masks."""
    matches = export_fixtures.assert_same_detections(self, served, expected)
    for i, (count, order) in enumerate(zip(served['num_detections'], matches)):
      self.assertAllClose(
        served['detection_masks'][i, :count],
        expected['detection_masks'][i, order],
        atol=MASK_ATOL,
      )
      for key in ('detection_masks', 'detection_classes'):  # zero padding
        self.assertEqual(np.abs(served[key][i, count:]).sum(), 0, key)

  def test_export_config_and_signatures(self):
    config = export_lib.read_export_config(self.crop_dir)
    self.assertEqual(config['model_type'], 'maskrcnn')
    self.assertEqual(config['options']['mask_output'], 'crop')
    self.assertEqual(config['detection_masks']['crop_size'], 28)
    self.assertIn('detection_masks', config['outputs'])
    # The NMS options are the gin config's DetectionGenerator's (the demo's batched NMS).
    self.assertEqual(config['nms_version'], 'batched')
    self.assertEqual(config['options']['score_threshold'], 0.05)
    self.assertEqual(config['options']['max_detections'], 100)
    self.assertEqual(config['category_names']['1'], export_fixtures.NAMES[0])
    self.assertEqual(config['num_classes_with_background'], 5)
    pasted = export_lib.read_export_config(self.pasted_dir)
    self.assertEqual(pasted['options']['mask_output'], 'pasted')
    for loaded, shape, dtype in (
      (self.crop, [None, 100, 28, 28], tf.float32),
      (self.pasted, [None, 100, None, None], tf.uint8),
    ):
      self.assertCountEqual(
        loaded.signatures, ['image_tensor', 'image_bytes', 'tf_example', 'serving_default']
      )
      spec = loaded.signatures['serving_default'].structured_outputs['detection_masks']
      self.assertEqual((spec.shape.as_list(), spec.dtype), (shape, dtype))

  def test_signatures_equal_the_in_process_model(self):
    self._assert_same(
      self._serve(self.crop, 'image_tensor', np.stack(self.images[:1])), self._expected([0])
    )
    self._assert_same(self._serve(self.crop, 'image_bytes', self.png), self.expected)
    examples = [
      _tf_example(png, *image.shape[:2]) for png, image in zip(self.png[1:], self.images[1:])
    ]
    self._assert_same(self._serve(self.crop, 'tf_example', examples), self._expected([1, 2]))

  def test_pasted_masks_are_model_gardens_paste(self):
    crop = self._serve(self.crop, 'image_bytes', self.png)
    pasted = self._serve(self.pasted, 'image_bytes', self.png)
    for key in client_lib.OUTPUT_KEYS:
      self.assertAllClose(pasted[key], crop[key], atol=MASK_ATOL, msg=key)
    masks = pasted['detection_masks']
    self.assertEqual(masks.shape, (3, 100, 150, 200))  # the batch's largest image
    for i, count in enumerate(crop['num_detections']):
      height, width = self.images[i].shape[:2]
      want = _reference_paste(
        crop['detection_masks'][i, :count], crop['detection_boxes'][i, :count], (height, width)
      )
      got = masks[i, :count, :height, :width]
      self.assertLess(np.mean(got != want), MAX_PASTE_MISMATCH)
      self.assertGreater(got.sum(), 0)
      self.assertEqual(masks[i, :, height:].sum() + masks[i, :, :, width:].sum(), 0)
      self.assertEqual(masks[i, count:].sum(), 0)
    # A client gets each image's masks at its own size.
    parsed = client_lib.detections_from_outputs(pasted)
    self.assertEqual(parsed[0].masks.shape[1:], self.images[0].shape[:2])

  def test_bad_inputs_are_refused_as_for_retinanet(self):
    big = np.zeros([301, 400, 3], np.uint8)  # 120400 pixels > 300 * 400
    for signature, values, message in (
      ('image_bytes', [self.png[0], b''], r'image_bytes\[1\]: empty image bytes'),
      ('image_bytes', [b'hello, not a picture'], r'image_bytes\[0\]: not a JPEG or PNG file'),
      ('image_bytes', [export_fixtures.zero_width_png()], r'zero-sized \(5x0 pixels'),
      ('image_bytes', [export_fixtures.encode(big)], r'120400 pixels, more than max_image_pixels'),
      ('image_tensor', big[None], r'images: the image has 301x400 = 120400 pixels'),
      (
        'tf_example',
        [tf.train.Example().SerializeToString()],
        r'tf_examples\[0\]: the tf.Example has no image/encoded',
      ),
    ):
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
        self._serve(self.crop, signature, values)
    # The loaded model answers the next valid request.
    self._assert_same(self._serve(self.crop, 'image_bytes', self.png[:1]), self._expected([0]))

  def test_export_nms_options_leave_the_models_own(self):
    own = self.model.detection_generator
    config = export_lib.make_export_config(
      self.model, (INPUT_SIZE, INPUT_SIZE), score_threshold=0.3, max_detections=10
    )
    self.assertEqual((config.nms_iou_threshold, config.pre_nms_top_k), (0.5, 5000))
    module = export_lib.DetectionServingModule(self.model, config)
    served = {k: v.numpy() for k, v in module.serve_image_bytes(tf.constant(self.png)).items()}
    self.assertIs(self.model.detection_generator, own)
    self.assertEqual(own.get_config()['pre_nms_score_threshold'], 0.05)
    self.assertEqual(served['detection_scores'].shape, (3, 10))
    # The detections scoring >= 0.3 among the default export's, best first.
    default = self._serve(self.crop, 'image_bytes', self.png)
    for i, count in enumerate(served['num_detections']):
      keep = default['detection_scores'][i] >= 0.3
      self.assertEqual(count, min(10, keep.sum()))
      self.assertAllClose(
        served['detection_scores'][i, :count], default['detection_scores'][i][keep][:count]
      )

  def test_options_a_model_cannot_export_with(self):
    with self.assertRaisesRegex(ValueError, 'apply_nms=False .* RetinaNet'):
      export_lib.DetectionServingModule(
        self.model,
        export_lib.make_export_config(self.model, (INPUT_SIZE, INPUT_SIZE), apply_nms=False),
      )
    own = self.model.detection_generator
    self.model.detection_generator = type(own).from_config(
      {**own.get_config(), 'nms_version': 'v1'}
    )
    try:
      with self.assertRaisesRegex(ValueError, "'v1' unrolls a fixed batch"):
        export_lib.DetectionServingModule(
          self.model, export_lib.make_export_config(self.model, (INPUT_SIZE, INPUT_SIZE))
        )
    finally:
      self.model.detection_generator = own
    target = os.path.join(self.get_temp_dir(), 'never')
    with self.assertRaisesRegex(ValueError, 'mask_output=pasted needs a model with masks'):
      export.export_from_checkpoint(
        [export_fixtures.TINY], MINIMAL_MODEL, self.checkpoint, target, mask_output='pasted'
      )
    with self.assertRaisesRegex(ValueError, 'MaskRCNNTask detects with NMS'):
      export.export_from_checkpoint(
        [MASKRCNN], MINIMAL_MODEL, self.checkpoint, target, apply_nms=False
      )
    with self.assertRaisesRegex(ValueError, "mask_output must be one of .*'whole'"):
      export.export_from_checkpoint(
        [MASKRCNN], MINIMAL_MODEL, self.checkpoint, target, mask_output='whole'
      )
    self.assertFalse(os.path.exists(target))

  def _predict(self, output_dir, **model):
    return predict.predict(
      [self.data['val']['image_dir']],
      output_dir,
      annotation_file=self.data['val']['annotation_file'],
      draw_min_score=0.3,
      show_progress=False,
      **model,
    )

  def _segm_results(self, summary):
    """detections.json checked by pycocotools (loadRes, a segm COCOeval); masks per id."""
    gt = coco_lib.COCO(self.data['val']['annotation_file'])
    results = gt.loadRes(summary['detections_file'])
    evaluation = cocoeval.COCOeval(gt, results, iouType='segm')
    evaluation.evaluate()
    evaluation.accumulate()
    with open(summary['detections_file']) as f:
      detections = json.load(f)
    self.assertLen(detections, summary['num_detections'])
    for entry in detections:
      self.assertIsInstance(entry['segmentation']['counts'], str)
      self.assertEqual(entry['segmentation']['size'], [INPUT_SIZE, INPUT_SIZE])
    return detections

  def test_predict_writes_rle_and_draws_masks(self):
    out = self.get_temp_dir()
    crop = self._segm_results(self._predict(os.path.join(out, 'crop'), saved_model=self.crop_dir))
    summary = self._predict(os.path.join(out, 'pasted'), saved_model=self.pasted_dir)
    pasted = self._segm_results(summary)
    # Crop masks pasted on the host and masks pasted in the graph: the same pixels.
    self.assertEqual([d['bbox'] for d in crop], [d['bbox'] for d in pasted])
    crop_masks = mask_api.decode([d['segmentation'] for d in crop])
    pasted_masks = mask_api.decode([d['segmentation'] for d in pasted])
    self.assertLess(np.mean(crop_masks != pasted_masks), MAX_PASTE_MISMATCH)
    # Drawings: the pixels of every drawn mask are tinted.
    image = summary['images'][0]
    drawn_masks = [
      mask_api.decode(d['segmentation'])
      for d in pasted
      if d['image_id'] == image['id'] and d['score'] >= 0.3
    ]
    self.assertNotEmpty(drawn_masks)
    self._assert_tinted(os.path.join(out, 'pasted', image['drawing']), image['path'], drawn_masks)

  def _assert_tinted(self, drawing_path, image_path, masks):
    with Image.open(drawing_path) as drawn, Image.open(image_path) as original:
      changed = np.any(np.asarray(drawn.convert('RGB')) != np.asarray(original.convert('RGB')), -1)
    self.assertGreater(np.mean(changed[np.any(masks, axis=0)]), 0.9)

  @pytest.mark.slow  # builds and traces the model once more (~30 s here)
  def test_predict_from_the_checkpoint_equals_the_export(self):
    out = self.get_temp_dir()
    from_export = self._segm_results(
      self._predict(os.path.join(out, 'export'), saved_model=self.crop_dir)
    )
    from_checkpoint = self._segm_results(
      self._predict(
        os.path.join(out, 'checkpoint'),
        gin_files=[MASKRCNN],
        gin_params=MINIMAL_MODEL,
        checkpoint=self.checkpoint,
      )
    )
    self.assertEqual(len(from_export), len(from_checkpoint))
    for a, b in zip(from_export, from_checkpoint):
      self.assertAllClose(a['bbox'] + [a['score']], b['bbox'] + [b['score']], atol=1e-3)
    masks = [
      mask_api.decode([d['segmentation'] for d in r]) for r in (from_export, from_checkpoint)
    ]
    self.assertLess(np.mean(masks[0] != masks[1]), MAX_PASTE_MISMATCH)

  def test_serve_client_draws_and_returns_masks(self):
    server = export_fixtures.FakeServing(self, self.crop)
    image_dir = self.data['val']['image_dir']
    out_dir = os.path.join(self.get_temp_dir(), 'drawn')

    def urlopen(request, timeout):
      del timeout
      return io.BytesIO(server.rest(request.data.decode()).encode())

    options = client_runner.ClientOptions(images=[image_dir], output_dir=out_dir, min_score=0.3)
    with mock.patch('urllib.request.urlopen', side_effect=urlopen), mock.patch('sys.stdout'):
      results, failed = client_runner.run_client(options)
    self.assertEqual(failed, [])
    name = sorted(os.listdir(image_dir))[0]
    path = os.path.join(image_dir, name)
    entry = results[path]
    self.assertLen(entry['segmentations'], len(entry['scores']))
    self.assertNotEmpty(entry['scores'])
    with open(path, 'rb') as f:
      outputs = self._serve(self.crop, 'image_bytes', [f.read()])
    detections = client_lib.detections_from_outputs(outputs)[0].above(0.3)
    masks = list(
      postprocessing.image_masks(detections.masks, detections.boxes, detections.image_size)
    )
    self.assertAllEqual(mask_api.decode(entry['segmentations']), np.stack(masks, axis=-1))
    self._assert_tinted(os.path.join(out_dir, name), path, masks)


if __name__ == '__main__':
  tf.test.main()

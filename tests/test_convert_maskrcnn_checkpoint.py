"""A tf-models-official Mask R-CNN checkpoint converts whole into our MaskRCNNTask's model.

The reference is Model Garden's own: `factory.build_maskrcnn` from its config objects
(its SpineNet-49 at an eighth of the widths, identity decoder, small heads, 5
classes, 128 px), saved as its trainer saves (`Checkpoint(global_step, model)`).
Our model is built by our task from gin_configs/testing/maskrcnn_convert.gin, which
describes the same model; after `spinenet-convert-checkpoint --gin_file=...` both
give the same detections and masks on the same image.
"""

import os
import re
import tempfile

import numpy as np
from official.vision.configs import backbones as backbones_cfg
from official.vision.configs import common as common_cfg
from official.vision.configs import decoders as decoders_cfg
from official.vision.configs import maskrcnn as maskrcnn_cfg
from official.vision.modeling import factory as reference_factory
from official.vision.modeling.backbones import spinenet as reference_spinenet
from official.vision.modeling.heads import instance_heads as reference_instance_heads
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet import checkpoint_conversion
from official_spinenet.modeling import maskrcnn_model
from official_spinenet.training import checkpoints
from official_spinenet.workflows import loading
from tests import binaries
from tests import reference_utils

GIN_FILE = 'testing/maskrcnn_convert.gin'
SIZE = 128
PARTS = ['backbone', 'rpn_head', 'detection_head', 'mask_head']
DETECTION_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes', 'detection_masks')


def _reference_config() -> maskrcnn_cfg.MaskRCNN:
  """Model Garden's config of the model that GIN_FILE describes."""
  return maskrcnn_cfg.MaskRCNN(
    num_classes=5,
    input_size=[SIZE, SIZE, 3],
    min_level=3,
    max_level=7,
    anchor=maskrcnn_cfg.Anchor(num_scales=1, aspect_ratios=[0.5, 1.0, 2.0], anchor_size=2.0),
    include_mask=True,
    backbone=backbones_cfg.Backbone(
      type='spinenet', spinenet=backbones_cfg.SpineNet(model_id='49')
    ),
    decoder=decoders_cfg.Decoder(type='identity'),
    rpn_head=maskrcnn_cfg.RPNHead(num_convs=1, num_filters=16),
    detection_head=maskrcnn_cfg.DetectionHead(num_convs=1, num_filters=16, num_fcs=1, fc_dims=32),
    roi_generator=maskrcnn_cfg.ROIGenerator(
      test_pre_nms_top_k=200, test_num_proposals=50, use_batched_nms=True
    ),
    detection_generator=maskrcnn_cfg.DetectionGenerator(
      pre_nms_top_k=5000,
      pre_nms_score_threshold=0.05,
      nms_iou_threshold=0.5,
      max_num_detections=20,
      nms_version='batched',
    ),
    mask_head=maskrcnn_cfg.MaskHead(upsample_factor=2, num_convs=1, num_filters=16),
    norm_activation=common_cfg.NormActivation(
      activation='relu', use_sync_bn=False, norm_momentum=0.99, norm_epsilon=0.001
    ),
  )


def _reference_model(seed: int) -> tf_keras.Model:
  """Model Garden's Mask R-CNN with random (well-scaled) weights.

  Its SpineNet config has no width setting, so the narrow SpineNet-49 is built
  with its class and handed to build_maskrcnn (its `backbone=` argument).
  """
  input_specs = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
  widths = dict(reference_spinenet.SCALING_MAP['49'], filter_size_scale=0.125)
  widths['endpoints_num_filters'] = 16
  backbone = reference_spinenet.SpineNet(input_specs=input_specs, **widths)
  model = reference_factory.build_maskrcnn(input_specs, _reference_config(), backbone=backbone)
  maskrcnn_model.build_weights(model, (SIZE, SIZE))
  model.set_weights(reference_utils.random_weights(model.get_weights(), seed))
  _tame_predictors(model)
  return model


def _tame_predictors(model: tf_keras.Model) -> None:
  """Scales down the predictor layers of random heads (biases zeroed).

  With random weights the RPN and box head output hundreds: every RoI scores as
  background and proposals are clipped flat. These scales (found on this model)
  give 20 distinct boxes with graded scores and masks between 0 and 1.
  """
  box_head = model.detection_head[0]
  for layer, scale in (
    (model.rpn_head._classifier, 1e-3),
    (model.rpn_head._box_regressor, 2e-5),
    (box_head._classifier, 1e-2),
    (box_head._box_regressor, 1e-3),
    (model.mask_head._mask_regressor, 1e-3),
  ):
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * scale, np.zeros_like(bias)])


def _detections(model, images):
  outputs = model(images, image_shape=tf.constant([[SIZE, SIZE]] * len(images)), training=False)
  return {key: outputs[key].numpy() for key in DETECTION_KEYS}


class _Holder(tf.Module):
  """Stands for a Model Garden model in a checkpoint: its parts as attributes."""

  def __init__(self, **parts):
    super().__init__()
    for name, part in parts.items():
      setattr(self, name, part)


class ConvertMaskRCNNCheckpointTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = _reference_model(seed=3)
    cls.images = tf.random.stateless_normal([1, SIZE, SIZE, 3], seed=[5, 1])
    cls.expected = _detections(cls.reference, cls.images)
    tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
    cls.source_dir = os.path.join(tmp, 'mg_maskrcnn')
    # What official.core's trainer writes: global_step, model (and optimizer).
    source = tf.train.Checkpoint(global_step=tf.Variable(100, dtype=tf.int64), model=cls.reference)
    tf.train.CheckpointManager(source, cls.source_dir, 1).save(100)
    cls.task = loading.build_task([GIN_FILE])
    cls.model = cls.task.build_model()
    cls.items = cls.task.checkpoint_items(cls.model)

  def _assert_restores_reference(self, converted):
    """Our loader restores every part; detections and masks equal the reference's."""
    self.assertEqual(loading.restore_weights(converted, self.items), 'parts')
    got = _detections(self.model, self.images)
    self.assertEqual(int(np.sum(self.expected['detection_scores'] > 0)), 20)
    for key in DETECTION_KEYS:
      self.assertAllClose(self.expected[key], got[key], atol=1e-5, rtol=1e-5, msg=key)

  def test_converts_whole_model_with_same_detections_and_masks(self):
    out, parts = checkpoint_conversion.convert_model_checkpoint(
      self.source_dir, self.items, os.path.join(self.get_temp_dir(), 'converted', 'maskrcnn')
    )
    self.assertEqual(parts, PARTS)
    # spinenet-eval / -export / -predict read it as the model's checkpoint...
    self._assert_restores_reference(out)
    # ...and spinenet-train as init_checkpoint with init_checkpoint_modules=['all'].
    restored = self.model.get_weights()
    self.model.set_weights([np.zeros_like(w) for w in restored])
    checkpoints.restore_modules(out, self.items, ['all'])
    for want, have in zip(restored, self.model.get_weights()):
      self.assertAllEqual(want, have)

  @pytest.mark.slow
  def test_tool_converts_whole_model(self):
    out = os.path.join(self.get_temp_dir(), 'tool', 'maskrcnn')
    args = (f'--source={self.source_dir}', f'--output={out}', f'--gin_file={GIN_FILE}')
    result = binaries.run_binary('convert_checkpoint', *args, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('(backbone, rpn_head, detection_head, mask_head)', result.stdout)
    self._assert_restores_reference(out)
    result = binaries.run_binary('convert_checkpoint', *args, '--model_id=96', timeout=300)
    self.assertEqual(result.returncode, 1)
    self.assertIn('--gin_file says the architecture; drop --model_id', result.stderr)

  def _assert_conversion_fails(self, source, pattern):
    never = os.path.join(self.get_temp_dir(), 'never')
    with self.assertRaisesRegex(ValueError, pattern):
      checkpoint_conversion.convert_model_checkpoint(
        source, self.items, never, config_name=GIN_FILE
      )
    self.assertFalse(tf.io.gfile.exists(never + '.index'))

  def test_not_a_maskrcnn_checkpoint_names_the_part_and_the_checkpoint(self):
    # Model Garden's RetinaNetModel keeps `_backbone` and `_head`.
    head = tf_keras.layers.Dense(4)
    head.build([None, 8])
    model = _Holder(_backbone=self.reference.backbone, _head=head)
    source = tf.train.Checkpoint(model=model).write(
      os.path.join(self.get_temp_dir(), 'retinanet', 'ckpt-1')
    )
    self._assert_conversion_fails(
      source, f'Found no rpn_head variables in checkpoint {re.escape(source)}.*model/rpn_head'
    )

  def _source_with(self, name, **heads):
    """A Mask R-CNN checkpoint of the reference with some heads replaced."""
    parts = {name: getattr(self.reference, name) for name in PARTS}
    parts.update(heads)
    path = os.path.join(self.get_temp_dir(), name, 'ckpt-1')
    return tf.train.Checkpoint(model=_Holder(**parts)).write(path)

  def test_narrower_mask_head_names_the_part_and_the_checkpoint(self):
    narrow = reference_instance_heads.MaskHead(num_classes=5, num_convs=1, num_filters=8)
    narrow([tf.zeros([1, 1, 14, 14, 16]), tf.zeros([1, 1], tf.int32)])
    source = self._source_with('narrow', mask_head=narrow)
    self._assert_conversion_fails(
      source,
      f'Checkpoint {re.escape(source)} '
      r'\(model/mask_head/\) does not match the mask_head '
      r'\(MaskHead\) of testing/maskrcnn_convert.gin:\n.*wrong shape(.|\n)*'
      r'Check testing/maskrcnn_convert.gin\'s MaskHead bindings',
    )

  def test_deeper_detection_head_is_not_dropped_silently(self):
    deeper = reference_instance_heads.DetectionHead(
      num_classes=5, num_convs=2, num_filters=16, num_fcs=1, fc_dims=32
    )
    deeper(tf.zeros([1, 1, 7, 7, 16]))
    source = self._source_with('deeper', detection_head=[deeper])
    self._assert_conversion_fails(
      source,
      r'\(model/detection_head/\) does not match the detection_head \(DetectionHead\)'
      r'(.|\n)*variables of the checkpoint are not in the model, e.g. 0/_conv_norms/1/',
    )

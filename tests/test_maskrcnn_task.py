"""The Mask R-CNN task: its loss equals tf-models-official's, its input checks, a training run.

The loss test feeds one training forward pass of the tiny gin config (our SpineNet
inside Model Garden's MaskRCNNModel, on shapes images through Model Garden's
parser) to both our `MaskRCNNTask.build_losses` and Model Garden's
`MaskRCNNTask.build_losses` (with the model's L2 terms as its `aux_losses`).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet import configurables
from official_spinenet.tasks import maskrcnn_task
from tests import binaries
from tests.minimal_model import MINIMAL_MODEL

TINY = 'testing/maskrcnn_tiny.gin'
NUM_CLASSES = 5


def _data_params(shapes_data):
  return [
    f"TRAIN_FILE_PATTERN = '{shapes_data['train']['tfrecord_pattern']}'",
    f"EVAL_FILE_PATTERN = '{shapes_data['val']['tfrecord_pattern']}'",
    f"ANNOTATION_FILE = '{shapes_data['val']['annotation_file']}'",
  ]


def _tiny_task(shapes_data, *params) -> maskrcnn_task.MaskRCNNTask:
  configurables.parse_gin([TINY], _data_params(shapes_data) + list(params))
  return configurables.build_experiment()['task']


@pytest.fixture(scope='module')
def forward_pass(shapes_data):
  """(task, model, outputs, labels) of one training forward pass of the tiny model."""
  task = _tiny_task(shapes_data, 'train/InputConfig.aug_rand_hflip = False')
  model = task.build_model()
  images, labels = next(iter(task.build_inputs(is_training=True)))
  outputs = task.train_outputs(model, images, labels)
  return task, model, outputs, labels


def _model_garden_losses(task, model, outputs, labels):
  from official.vision.configs import maskrcnn as maskrcnn_config  # pylint: disable=g-import-not-at-top
  from official.vision.tasks import maskrcnn as maskrcnn_lib  # pylint: disable=g-import-not-at-top

  config = maskrcnn_config.MaskRCNNTask()
  config.model.num_classes = NUM_CLASSES
  config.model.include_mask = True
  config.losses.rpn_huber_loss_delta = task.rpn_huber_loss_delta
  config.losses.frcnn_huber_loss_delta = task.frcnn_huber_loss_delta
  reference = maskrcnn_lib.MaskRCNNTask(config)
  return reference.build_losses(outputs, labels, aux_losses=model.losses)


def test_losses_equal_model_gardens(forward_pass):
  task, model, outputs, labels = forward_pass
  ours = task.build_losses(outputs, labels, model)
  theirs = _model_garden_losses(task, model, outputs, labels)
  for name in ('rpn_score_loss', 'rpn_box_loss', 'frcnn_cls_loss', 'frcnn_box_loss', 'mask_loss'):
    np.testing.assert_allclose(ours[name].numpy(), theirs[name].numpy(), rtol=1e-6, err_msg=name)
    assert ours[name].numpy() > 0.0, name  # every term is exercised
  np.testing.assert_allclose(ours['model_loss'].numpy(), theirs['model_loss'].numpy(), rtol=1e-6)
  np.testing.assert_allclose(ours['total_loss'].numpy(), theirs['total_loss'].numpy(), rtol=1e-6)
  assert ours['l2_loss'].numpy() > 0.0
  assert list(ours) and set(ours) == set(task.loss_names)


def test_loss_weights_scale_the_model_loss(forward_pass, shapes_data):
  _, model, outputs, labels = forward_pass
  weighted = _tiny_task(shapes_data, "MaskRCNNTask.loss_weights = {'mask_loss': 3.0}")
  plain = _tiny_task(shapes_data)
  a = weighted.build_losses(outputs, labels, model)
  b = plain.build_losses(outputs, labels, model)
  np.testing.assert_allclose(
    a['model_loss'].numpy(), b['model_loss'].numpy() + 2.0 * b['mask_loss'].numpy(), rtol=1e-6
  )
  with pytest.raises(ValueError, match=r"unknown loss\(es\) \['mask'\]"):
    _tiny_task(shapes_data, "MaskRCNNTask.loss_weights = {'mask': 3.0}")


def test_training_outputs_have_the_configured_sizes(forward_pass):
  _, _, outputs, labels = forward_pass
  batch = labels['image_info'].shape[0]
  # The tiny config samples 32 RoIs and 8 masks per image; 28x28 mask targets.
  assert outputs['class_outputs'].shape == (batch, 32, NUM_CLASSES)
  assert outputs['box_outputs'].shape == (batch, 32, 4 * NUM_CLASSES)
  assert outputs['mask_outputs'].shape == (batch, 8, 28, 28)
  assert outputs['mask_targets'].shape == (batch, 8, 28, 28)
  assert sorted(outputs['rpn_scores']) == ['3', '4', '5', '6', '7']


def test_eval_outputs_hold_detections_and_crop_masks(forward_pass, shapes_data):
  task, model, _, _ = forward_pass
  images, labels = next(iter(task.build_inputs(is_training=False)))
  outputs = task.eval_outputs(model, images, labels)
  batch = images.shape[0]
  assert outputs['detection_boxes'].shape == (batch, 100, 4)
  assert outputs['detection_masks'].shape == (batch, 100, 28, 28)
  masks = outputs['detection_masks'].numpy()
  assert masks.min() >= 0.0 and masks.max() <= 1.0  # probabilities


def _write_box_only_records(path, shapes_data):
  """The shapes val records with the mask feature dropped."""
  source = shapes_data['val']['tfrecord_pattern']
  with tf.io.TFRecordWriter(path) as writer:
    for serialized in tf.data.TFRecordDataset(tf.io.gfile.glob(source)):
      example = tf.train.Example.FromString(serialized.numpy())
      del example.features.feature['image/object/mask']
      writer.write(example.SerializeToString())


def test_records_without_masks_fail_before_training(shapes_data, tmp_path):
  path = str(tmp_path / 'boxes_only.tfrecord')
  _write_box_only_records(path, shapes_data)
  task = _tiny_task(shapes_data, f"TRAIN_FILE_PATTERN = '{path}'")
  with pytest.raises(ValueError, match=r'train_data.file_pattern: .*boxes_only.tfrecord has no '):
    task.validate('train')
  # A file that is not a TFRecord at all is named too (read before TensorFlow runs).
  not_records = tmp_path / 'image.tfrecord'
  not_records.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(64))
  task = _tiny_task(shapes_data, f"TRAIN_FILE_PATTERN = '{not_records}'")
  with pytest.raises(ValueError, match=r'image.tfrecord is not a TFRecord file'):
    task.validate('train')
  # Faster R-CNN (no mask head) trains on the same records.
  boxes_only = _tiny_task(
    shapes_data, f"TRAIN_FILE_PATTERN = '{path}'", 'MaskRCNNTask.mask_head = None'
  )
  boxes_only.validate('train')


def test_bad_settings_are_named(shapes_data):
  with pytest.raises(ValueError, match=r'MaskRCNNTask.image_size \(100, 100\) must be a multiple'):
    _tiny_task(shapes_data, 'IMAGE_SIZE = 100').validate('train')
  with pytest.raises(ValueError, match='MaskRCNNTask.num_classes counts the background'):
    _tiny_task(shapes_data, 'NUM_CLASSES = 1').validate('train')
  with pytest.raises(ValueError, match=r"Unknown gin parameter\(s\) \['num_conv'\] for 'RPNHead'"):
    configurables.parse_gin([TINY], ['RPNHead.num_conv = 2'])


def test_train_binary_trains_and_evaluates_masks(shapes_data, tmp_path):
  # The minimal SpineNet and pyramid (MINIMAL_MODEL): the binary's time is mostly
  # building and tracing, which scales with blocks and levels; the tiny topology's
  # outputs are checked in-process above.
  model_dir = str(tmp_path / 'model')
  run = binaries.run_binary(
    'train',
    f'--gin_file={TINY}',
    f'--model_dir={model_dir}',
    '--mode=train_and_eval',
    *[f'--gin_param={p}' for p in _data_params(shapes_data) + MINIMAL_MODEL],
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  with open(os.path.join(model_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 4
  for name in ('AP', 'AP50', 'mask_AP', 'mask_AP50'):
    assert 0.0 <= metrics[name] <= 1.0, name
  assert os.path.exists(os.path.join(model_dir, 'ckpt-4.index'))
  with open(os.path.join(model_dir, 'operative_config.gin')) as f:
    operative = f.read()
  assert 'MaskRCNNTask.num_classes = %NUM_CLASSES' in operative
  assert 'NUM_CLASSES = 5' in operative


def test_tflite_export_refuses_mask_rcnn_before_loading(tmp_path):
  from official_spinenet.workflows import tflite  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match='supports RetinaNet configs only.*MaskRCNNTask'):
    tflite.export_tflite_from_checkpoint(
      [TINY], [], str(tmp_path / 'no_checkpoint'), str(tmp_path / 'model.tflite')
    )

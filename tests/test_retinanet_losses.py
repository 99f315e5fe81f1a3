"""Our RetinaNet task loss equals tf-models-official's RetinaNetTask.build_losses.

Same model outputs (a small SpineNet RetinaNet's, on random images, spread out so
that the focal and Huber terms are far from their minima), same labels (Model
Garden's own AnchorLabeler on random ground-truth boxes, as its parser makes them),
same L2 terms (the model's regularization losses, Model Garden's `aux_losses`).
"""

import collections
import functools

import numpy as np
import pytest
import tensorflow as tf

from official_spinenet import model_garden
from official_spinenet.modeling.backbones import spinenet
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.tasks import base_task
from official_spinenet.tasks import retinanet_task

IMAGE_SIZE = 128
NUM_CLASSES = 5
BATCH = 2
MIN_LEVEL, MAX_LEVEL = 3, 7
LOSS_SETTINGS = dict(
  focal_loss_alpha=0.25, focal_loss_gamma=1.5, huber_loss_delta=0.1, box_loss_weight=50.0
)


def _our_task(**loss_settings):
  backbone = functools.partial(
    spinenet.build_spinenet, '49', filter_size_scale=0.125, endpoints_num_filters=16
  )
  head = functools.partial(retinanet_head.RetinaNetHead, num_convs=1, num_filters=16)
  return retinanet_task.RetinaNetTask(
    num_classes=NUM_CLASSES,
    image_size=IMAGE_SIZE,
    train_data=base_task.InputConfig(file_pattern='unused', global_batch_size=BATCH),
    backbone=backbone,
    head=head,
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    l2_weight_decay=4e-5,
    **loss_settings,
  )


def _model_garden_task(focal_loss_alpha, focal_loss_gamma, huber_loss_delta, box_loss_weight):
  from official.vision.configs import retinanet as retinanet_config  # pylint: disable=g-import-not-at-top
  from official.vision.tasks import retinanet as retinanet_lib  # pylint: disable=g-import-not-at-top

  config = retinanet_config.RetinaNetTask()
  config.model.num_classes = NUM_CLASSES
  config.losses.focal_loss_alpha = focal_loss_alpha
  config.losses.focal_loss_gamma = focal_loss_gamma
  config.losses.huber_loss_delta = huber_loss_delta
  config.losses.box_loss_weight = box_loss_weight
  return retinanet_lib.RetinaNetTask(config)


def _labels(seed: int):
  """The retinanet parser's labels for BATCH images with a few random boxes each."""
  anchor = model_garden.load('anchor')
  anchors = anchor.Anchor(
    MIN_LEVEL,
    MAX_LEVEL,
    num_scales=3,
    aspect_ratios=[0.5, 1.0, 2.0],
    anchor_size=4.0,
    image_size=(IMAGE_SIZE, IMAGE_SIZE),
  )
  labeler = anchor.AnchorLabeler(match_threshold=0.5, unmatched_threshold=0.4)
  rng = np.random.default_rng(seed)
  per_image = []
  for _ in range(BATCH):
    corners = rng.uniform(0, IMAGE_SIZE, size=(6, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1) + 8.0], axis=-1)
    classes = rng.integers(1, NUM_CLASSES, size=(6, 1))
    cls_t, box_t, _, cls_w, box_w = labeler.label_anchors(
      anchors.multilevel_boxes, tf.constant(boxes, tf.float32), tf.constant(classes, tf.int32)
    )
    per_image.append((cls_t, box_t, cls_w, box_w))
  stack = lambda values: tf.stack(values, axis=0)
  levels = [str(l) for l in range(MIN_LEVEL, MAX_LEVEL + 1)]
  return {
    'cls_targets': collections.OrderedDict(
      (l, stack([p[0][l] for p in per_image])) for l in levels
    ),
    'box_targets': collections.OrderedDict(
      (l, stack([p[1][l] for p in per_image])) for l in levels
    ),
    'cls_weights': stack([p[2] for p in per_image]),
    'box_weights': stack([p[3] for p in per_image]),
  }


def _outputs(model, seed: int):
  """Model outputs on random images, spread (logits std ~2, deltas std ~0.3)."""
  rng = np.random.default_rng(seed)
  images = tf.constant(rng.normal(size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)), tf.float32)
  raw = model(images, training=True)
  spread = {}
  for key, scale in (('cls_outputs', 2.0), ('box_outputs', 0.3)):
    spread[key] = collections.OrderedDict(
      (l, raw[key][l] + tf.constant(rng.normal(scale=scale, size=raw[key][l].shape), tf.float32))
      for l in sorted(raw[key], key=int)
    )
  return spread


@pytest.fixture(scope='module')
def shared():
  task = _our_task(**LOSS_SETTINGS)
  model = task.build_model()
  return task, model, _outputs(model, seed=1), _labels(seed=2)


@pytest.mark.parametrize(
  'settings',
  [
    LOSS_SETTINGS,
    dict(focal_loss_alpha=0.4, focal_loss_gamma=2.0, huber_loss_delta=0.2, box_loss_weight=10.0),
  ],
)
def test_task_loss_equals_model_garden(shared, settings):
  _, model, outputs, labels = shared
  ours = _our_task(**settings).build_losses(outputs, labels, model)
  total, cls_loss, box_loss, model_loss = _model_garden_task(**settings).build_losses(
    outputs, labels, aux_losses=model.losses
  )
  assert float(tf.reduce_sum(labels['box_weights'])) > 10  # positives exist
  assert float(ours['l2_loss']) > 0  # the L2 terms take part
  for name, reference in (
    ('total_loss', total),
    ('cls_loss', cls_loss),
    ('box_loss', box_loss),
    ('model_loss', model_loss),
  ):
    np.testing.assert_allclose(float(ours[name]), float(reference), rtol=1e-5, err_msg=name)


def test_loss_without_positives_equals_model_garden(shared):
  _, model, outputs, labels = shared
  labels = dict(labels, box_weights=tf.zeros_like(labels['box_weights']))
  ours = _our_task(**LOSS_SETTINGS).build_losses(outputs, labels, model)
  total, cls_loss, box_loss, _ = _model_garden_task(**LOSS_SETTINGS).build_losses(
    outputs, labels, aux_losses=model.losses
  )
  assert float(box_loss) == 0.0
  np.testing.assert_allclose(float(ours['cls_loss']), float(cls_loss), rtol=1e-5)
  np.testing.assert_allclose(float(ours['total_loss']), float(total), rtol=1e-5)

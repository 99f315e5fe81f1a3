"""Anytime (early-exit) RetinaNet on NAS-FPN: model, deep-supervision task, training run."""

import os

from absl.testing import parameterized
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official_spinenet import configurables
from official_spinenet.modeling import anytime_retinanet_model
from official_spinenet.modeling import model_stats
from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.decoders import nasfpn
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.tasks import retinanet_losses
from official_spinenet.workflows import demo
from official_spinenet.workflows import export
from official_spinenet.workflows import train
from tests import export_fixtures

SIZE = 128
NUM_CLASSES = 5
LEVELS = [str(l) for l in range(3, 8)]
DEMO = 'demo/nasfpn_anytime_shapes.gin'
# The anytime demo at tiny widths: 2 exits, quarter-width ResNet-10 (one block per
# stage: the exits, not the backbone, are under test, and building and tracing the
# model, most of a run, grows with its blocks), 16-channel pyramid and head.
TINY_DEMO_PARAMS = [
  'NUM_REPEATS = 2',
  'NUM_FILTERS = 16',
  'TRAIN_BATCH_SIZE = 4',
  'EVAL_BATCH_SIZE = 4',
  'TRAIN_STEPS = 2',
  'resnet.model_id = 10',
  'resnet.depth_multiplier = 0.25',
  'RetinaNetHead.num_convs = 1',
  'RetinaNetHead.num_filters = 16',
  'learning_rate.warmup_steps = 0',
  'TrainerConfig.steps_per_loop = 2',
  'TrainerConfig.checkpoint_interval = 2',
]


def _tiny_backbone(size=SIZE):
  """Levels 3-5 of five stride-2 convs (widths 12, 16, 24), like a small ResNet."""
  inputs = tf_keras.Input([size, size, 3])
  x, features = inputs, {}
  for level, width in enumerate((8, 8, 12, 16, 24), start=1):
    x = tf_keras.layers.Conv2D(width, 3, strides=2, padding='same', activation='relu')(x)
    if level >= 3:
      features[str(level)] = x
  model = tf_keras.Model(inputs, features)
  model.output_specs = {k: v.shape for k, v in features.items()}
  return model


def _model(
  num_repeats=2,
  num_filters=16,
  separate_heads=False,
  use_separable_conv=False,
  num_convs=1,
  backbone=None,
  **kwargs,
):
  backbone = backbone or _tiny_backbone()
  decoder = nasfpn.NASFPN(
    input_specs=backbone.output_specs,
    num_repeats=num_repeats,
    num_filters=num_filters,
    merge_filters=None,
    use_separable_conv=use_separable_conv,
  )
  head = retinanet_head.RetinaNetHead(
    num_classes=NUM_CLASSES, num_convs=num_convs, num_filters=num_filters
  )
  model = anytime_retinanet_model.AnytimeRetinaNetModel(
    backbone=backbone, head=head, decoder=decoder, separate_heads=separate_heads, **kwargs
  )
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False, all_exits=True)
  return model


def _images(batch=2, seed=0):
  return tf.random.stateless_uniform([batch, SIZE, SIZE, 3], seed=[seed, 1])


def _assert_outputs(testcase, outputs, batch):
  testcase.assertEqual(sorted(outputs), ['box_outputs', 'cls_outputs'])
  testcase.assertEqual(sorted(outputs['cls_outputs']), LEVELS)
  for level in LEVELS:
    side = SIZE // 2 ** int(level)
    testcase.assertEqual(outputs['cls_outputs'][level].shape, [batch, side, side, NUM_CLASSES * 9])
    testcase.assertEqual(outputs['box_outputs'][level].shape, [batch, side, side, 4 * 9])


class AnytimeModelTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.named_parameters(
    ('1_repeat_16', 1, 16, False),
    ('3_repeats_24', 3, 24, False),
    ('2_repeats_16_separable', 2, 16, True),
  )
  def test_outputs_of_every_exit(self, num_repeats, num_filters, separable):
    model = _model(num_repeats, num_filters, use_separable_conv=separable)
    self.assertEqual(model.num_exits, num_repeats)
    images = _images()
    per_exit = model(images, training=True)
    self.assertLen(per_exit, num_repeats)
    for outputs in per_exit:
      _assert_outputs(self, outputs, 2)
    # Inference: one dict, the last exit unless told otherwise.
    _assert_outputs(self, model(images, training=False), 2)
    _assert_outputs(self, model(images, training=False, exit_index=1), 2)
    if separable:
      self.assertTrue(
        any(isinstance(l, tf_keras.layers.SeparableConv2D) for l in model.decoder.layers)
      )

  def test_early_exit_equals_that_exit_of_the_full_run(self):
    model = _model(num_repeats=3)
    images = _images()
    full = model(images, training=False, all_exits=True)
    self.assertLen(full, 3)
    for k in (1, 2, 3, -1):
      early = model(images, training=False, exit_index=k)
      reference = full[k - 1] if k > 0 else full[k]
      for key in ('cls_outputs', 'box_outputs'):
        for level in LEVELS:
          self.assertAllClose(early[key][level], reference[key][level], atol=1e-5)
    # The last exit is what a plain RetinaNet of the same parts computes.
    plain = retinanet_model.RetinaNetModel(
      backbone=model.backbone, head=model.head, decoder=model.decoder
    )
    self.assertAllClose(
      plain(images, training=False)['cls_outputs']['3'], full[-1]['cls_outputs']['3'], atol=1e-5
    )
    with self.assertRaisesRegex(ValueError, r'exit_index must be in \[1, 3\]'):
      model(images, training=False, exit_index=4)

  def test_early_exit_gives_valid_detections(self):
    model = _model(num_repeats=3)
    images = _images(batch=2)
    image_shape = tf.constant([[SIZE, SIZE], [96.0, 112.0]])
    # Untrained scores sit near the 0.01 prior: a zero threshold keeps candidates.
    detections = model.detect(
      images,
      image_shape=image_shape,
      exit_index=1,
      pre_nms_score_threshold=0.0,
      max_num_detections=20,
    )
    num = detections['num_detections'].numpy()
    self.assertAllEqual(num, [20, 20])
    boxes = detections['detection_boxes'].numpy()
    scores = detections['detection_scores'].numpy()
    classes = detections['detection_classes'].numpy()
    self.assertTrue(np.all(boxes >= 0))
    self.assertTrue(np.all(boxes[0] <= SIZE))
    self.assertTrue(np.all(boxes[1, :, [0, 2]] <= 96.0) and np.all(boxes[1, :, [1, 3]] <= 112.0))
    self.assertTrue(
      np.all(boxes[..., 2] >= boxes[..., 0]) and np.all(boxes[..., 3] >= boxes[..., 1])
    )
    self.assertTrue(np.all((scores > 0) & (scores < 1)))
    self.assertTrue(np.all(np.diff(scores, axis=1) <= 1e-6))  # best first
    self.assertTrue(np.all((classes >= 0) & (classes < NUM_CLASSES)))
    # The exit's raw outputs come back too, and they are exit 1's.
    first = model(images, training=False, exit_index=1)
    self.assertAllClose(detections['cls_outputs']['4'], first['cls_outputs']['4'], atol=1e-5)

  def test_earlier_exits_cost_fewer_multiply_adds(self):
    model = _model(num_repeats=3)
    counts = [
      model_stats.count_multiply_adds(model.exit_model(k), [1, SIZE, SIZE, 3]) for k in (1, 2, 3)
    ]
    self.assertLess(counts[0], counts[1])
    self.assertLess(counts[1], counts[2])
    # Every repeat costs the same: one pyramid network's worth more per exit.
    self.assertEqual(counts[1] - counts[0], counts[2] - counts[1])
    # The model itself at inference counts as its default exit.
    model.default_exit_index = 1
    self.assertEqual(model_stats.count_multiply_adds(model, [1, SIZE, SIZE, 3]), counts[0])
    model.default_exit_index = None
    self.assertEqual(model.default_exit_index, 3)

  def test_shared_and_separate_heads(self):
    backbone = _tiny_backbone()
    shared = _model(num_repeats=3, backbone=backbone)
    separate = _model(num_repeats=3, backbone=backbone, separate_heads=True)
    head_params = model_stats.count_params(shared.head)
    self.assertEqual(
      model_stats.count_params(separate), model_stats.count_params(shared) + 2 * head_params
    )
    self.assertLen({id(h) for h in shared.heads}, 1)
    self.assertLen({id(h) for h in separate.heads}, 3)
    self.assertIs(separate.heads[-1], separate.head)
    self.assertIn('exit_heads', separate.checkpoint_items)
    self.assertNotIn('exit_heads', shared.checkpoint_items)
    # Separate heads give different predictions per exit from the same pyramid.
    images = _images()
    per_exit = separate(images, training=True)
    self.assertLen(per_exit, 3)

  def test_checkpoint_restores_into_a_plain_retinanet(self):
    model = _model(num_repeats=2)
    images = _images()
    expected = model(images, training=False)  # the last exit
    path = tf.train.Checkpoint(model=model, **model.checkpoint_items).write(
      os.path.join(self.get_temp_dir(), 'anytime')
    )

    fresh_backbone = _tiny_backbone()
    fresh_backbone.set_weights(model.backbone.get_weights())  # the backbone is not ours
    plain = retinanet_model.RetinaNetModel(
      backbone=fresh_backbone,
      head=retinanet_head.RetinaNetHead.from_config(model.head.get_config()),
      decoder=nasfpn.NASFPN.from_config(model.decoder.get_config()),
    )
    plain(images, training=False)
    plain_path = tf.train.Checkpoint(model=plain, **plain.checkpoint_items).write(
      os.path.join(self.get_temp_dir(), 'plain')
    )
    # The same variables under the same keys.
    self.assertEqual(
      {k: tuple(s) for k, s in tf.train.list_variables(path) if '_CHECKPOINTABLE' not in k},
      {k: tuple(s) for k, s in tf.train.list_variables(plain_path) if '_CHECKPOINTABLE' not in k},
    )
    tf.train.Checkpoint(model=plain).read(path).assert_existing_objects_matched()
    restored = plain(images, training=False)
    for level in LEVELS:
      self.assertAllClose(restored['cls_outputs'][level], expected['cls_outputs'][level], atol=1e-5)
      self.assertAllClose(restored['box_outputs'][level], expected['box_outputs'][level], atol=1e-5)

  def test_get_config_round_trip(self):
    model = _model(num_repeats=2, separate_heads=True, default_exit_index=1)
    config = model.get_config()
    self.assertTrue(config['separate_heads'])
    self.assertEqual(config['default_exit_index'], 1)
    again = anytime_retinanet_model.AnytimeRetinaNetModel.from_config(config)
    again(tf.zeros([1, SIZE, SIZE, 3]), training=False, all_exits=True)
    self.assertEqual(again.get_config()['separate_heads'], True)
    self.assertEqual(again.default_exit_index, 1)
    self.assertEqual(model_stats.count_params(again), model_stats.count_params(model))
    self.assertEqual(again.decoder.get_config(), model.decoder.get_config())

  def test_bad_arguments(self):
    backbone = _tiny_backbone()
    head = retinanet_head.RetinaNetHead(num_classes=NUM_CLASSES, num_convs=1, num_filters=16)
    with self.assertRaisesRegex(ValueError, 'early_exit_model'):
      anytime_retinanet_model.AnytimeRetinaNetModel(backbone=backbone, head=head, decoder=None)
    with self.assertRaisesRegex(ValueError, r'exit_index must be in \[1, 2\]'):
      _model(num_repeats=2, backbone=backbone, default_exit_index=3)
    with self.assertRaisesRegex(ValueError, 'must be an int'):
      anytime_retinanet_model.resolve_exit_index(1.5, 2)


def _tiny_task(shapes_data, *extra):
  configurables.parse_gin(
    [DEMO], TINY_DEMO_PARAMS + demo.shapes_data_params(shapes_data) + list(extra)
  )
  return configurables.build_experiment()['task']


@pytest.fixture(scope='module')
def built(shapes_data):
  """One tiny task and model: exit weights, weight decay, evaluation at exit 1."""
  task = _tiny_task(
    shapes_data,
    'AnytimeRetinaNetTask.exit_weights = [0.25, 1.0]',
    'AnytimeRetinaNetTask.l2_weight_decay = 1e-3',
    'AnytimeRetinaNetTask.eval_exit = 1',
    # Untrained scores sit near the 0.01 prior: keep every candidate.
    'AnytimeRetinaNetTask.pre_nms_score_threshold = 0.0',
  )
  return task, task.build_model()


def test_loss_is_the_weighted_sum_over_exits(built):
  task, model = built
  assert model.num_exits == 2
  inputs, labels = next(iter(task.build_inputs(is_training=True)))
  outputs = model(inputs, training=True)
  losses = task.build_losses(outputs, labels, model)
  assert sorted(losses) == sorted(task.loss_names)
  assert 'exit_1/model_loss' in task.loss_names and 'exit_2/box_loss' in task.loss_names
  per_exit = [retinanet_losses.retinanet_loss(o, labels, NUM_CLASSES) for o in outputs]
  l2 = tf.add_n(model.losses)
  for k, exit_losses in enumerate(per_exit, start=1):
    np.testing.assert_allclose(losses[f'exit_{k}/model_loss'], exit_losses['total_loss'], rtol=1e-5)
    np.testing.assert_allclose(losses[f'exit_{k}/cls_loss'], exit_losses['cls_loss'], rtol=1e-5)
  expected_model = 0.25 * per_exit[0]['total_loss'] + per_exit[1]['total_loss']
  np.testing.assert_allclose(losses['model_loss'], expected_model, rtol=1e-5)
  np.testing.assert_allclose(losses['l2_loss'], l2, rtol=1e-5)
  np.testing.assert_allclose(losses['total_loss'], expected_model + l2, rtol=1e-5)
  assert float(losses['l2_loss']) > 0
  # The exits predict differently (so the weights matter).
  assert not np.allclose(outputs[0]['box_outputs']['3'], outputs[1]['box_outputs']['3'])


def test_eval_exit_selects_the_exit_evaluation_uses(built, shapes_data):
  task, model = built
  inputs, labels = next(iter(task.build_inputs(is_training=False)))
  outputs = task.eval_outputs(model, inputs, labels)
  assert int(np.sum(outputs['num_detections'])) > 0
  for k, expect_equal in ((1, True), (2, False)):
    detections = model.detect(
      inputs,
      image_shape=labels['image_info'][:, 1, :],
      anchor_boxes=labels['anchor_boxes'],
      exit_index=k,
      **task.nms_settings,
    )
    same = np.allclose(outputs['detection_scores'], detections['detection_scores'])
    assert same == expect_equal, k
  bad = _tiny_task(shapes_data, 'AnytimeRetinaNetTask.exit_weights = [1.0, 1.0, 1.0]')
  with pytest.raises(RuntimeError, match='build_model'):
    _ = bad.loss_names
  with pytest.raises(ValueError, match='exit_weights has 3 entries but the model has 2 exits'):
    bad._check_exits(2)  # pylint: disable=protected-access


def test_two_step_training_run(shapes_data, tmp_path):
  model_dir = str(tmp_path / 'model')
  losses = train.launch(
    [DEMO], TINY_DEMO_PARAMS + demo.shapes_data_params(shapes_data), model_dir, mode='train'
  )
  for k in (1, 2):
    assert np.isfinite(losses[f'exit_{k}/model_loss'])
  assert losses['total_loss'] == pytest.approx(
    losses['exit_1/model_loss'] + losses['exit_2/model_loss'] + losses['l2_loss'], rel=1e-4
  )
  operative = open(os.path.join(model_dir, 'operative_config.gin')).read()
  assert 'AnytimeRetinaNetTask.separate_heads = False' in operative
  # Evaluation of exit 1 of the trained checkpoint.
  metrics = train.launch(
    [DEMO],
    TINY_DEMO_PARAMS
    + demo.shapes_data_params(shapes_data)
    + ['AnytimeRetinaNetTask.eval_exit = 1'],
    model_dir,
    mode='eval',
  )
  assert -1.0 <= metrics['AP50'] <= 1.0 and metrics['num_images'] == 4


def test_export_of_an_early_exit(shapes_data, tmp_path):
  """spinenet-export --exit_index=k: the SavedModel detects with exit k only."""
  params = TINY_DEMO_PARAMS + demo.shapes_data_params(shapes_data)
  model, prefix = export_fixtures.make_checkpoint(str(tmp_path / 'model'), [DEMO], params)
  with pytest.raises(ValueError, match='exit_index=1 needs an anytime NAS-FPN model'):
    export.export_from_checkpoint(
      [export_fixtures.TINY], [], prefix, str(tmp_path / 'plain'), exit_index=1
    )
  export_dir = export.export_from_checkpoint(
    [DEMO], params, prefix, str(tmp_path / 'export'), exit_index=1
  )
  served = tf.saved_model.load(export_dir).signatures['image_tensor']
  images = export_fixtures.sample_images()[:1]
  settings = dict(
    score_threshold=0.05, max_detections=100, nms_iou_threshold=0.5, pre_nms_top_k=5000
  )
  actual = served(images=tf.constant(images[0][None]))
  by_exit = {}
  for k in (1, 2):
    model.default_exit_index = k
    by_exit[k] = export_fixtures.reference_detections(model, images, **settings)
  export_fixtures.assert_same_detections(tf.test.TestCase(), actual, by_exit[1])
  assert not np.allclose(by_exit[1]['detection_scores'], by_exit[2]['detection_scores'])

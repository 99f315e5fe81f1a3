"""RetinaNetModel, RetinaNet losses and the RetinaNet input pipeline (tiny, fast)."""

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet.data import retinanet_input
from official_spinenet.data import shapes
from official_spinenet.modeling import retinanet_model
from official_spinenet.modeling.backbones import factory
from official_spinenet.modeling.heads import retinanet_head
from official_spinenet.tasks import retinanet_losses

IMAGE_SIZE = 128
MIN_LEVEL, MAX_LEVEL = 3, 7
NUM_CLASSES = shapes.NUM_CLASSES_WITH_BACKGROUND
NUM_ANCHORS = 9
BATCH = 4


def _tiny_model(seed=0):
  tf_keras.utils.set_random_seed(seed)
  backbone = factory.build_backbone(
    'spinenet',
    '49',
    input_specs=[None, IMAGE_SIZE, IMAGE_SIZE, 3],
    filter_size_scale=0.25,
    endpoints_num_filters=32,
  )
  head = retinanet_head.RetinaNetHead(
    min_level=MIN_LEVEL,
    max_level=MAX_LEVEL,
    num_classes=NUM_CLASSES,
    num_anchors_per_location=NUM_ANCHORS,
    num_convs=1,
    num_filters=32,
  )
  return retinanet_model.RetinaNetModel(backbone=backbone, head=head)


class RetinaNetModelTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Removed after the class's tests (unittest's class cleanups).
    data_dir = cls.enterClassContext(tempfile.TemporaryDirectory())
    cls.data = shapes.make_shapes_dataset(
      data_dir,
      num_train=8,
      num_val=2,
      image_size=IMAGE_SIZE,
      seed=0,
      num_shards=2,
      show_progress=False,
    )
    dataset = retinanet_input.build_retinanet_dataset(
      cls.data['train']['tfrecord_pattern'],
      is_training=True,
      global_batch_size=BATCH,
      image_size=(IMAGE_SIZE, IMAGE_SIZE),
      min_level=MIN_LEVEL,
      max_level=MAX_LEVEL,
      aug_rand_hflip=False,
      seed=1,
    )
    cls.images, cls.labels = next(iter(dataset))
    cls.model = _tiny_model()  # Shared by the tests that do not change weights.

  def test_batch_and_output_shapes(self):
    self.assertEqual(self.images.shape, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3))
    self.assertEqual(self.images.dtype, tf.float32)
    self.assertGreater(float(tf.reduce_sum(self.labels['box_weights'])), 0.0)
    model = self.model
    outputs = model(self.images, training=False)
    self.assertEqual(sorted(outputs), ['box_outputs', 'cls_outputs'])
    for level in range(MIN_LEVEL, MAX_LEVEL + 1):
      size = IMAGE_SIZE // 2**level
      self.assertEqual(
        outputs['cls_outputs'][str(level)].shape, (BATCH, size, size, NUM_CLASSES * NUM_ANCHORS)
      )
      self.assertEqual(
        outputs['box_outputs'][str(level)].shape, (BATCH, size, size, 4 * NUM_ANCHORS)
      )
      self.assertEqual(
        self.labels['cls_targets'][str(level)].shape, (BATCH, size, size, NUM_ANCHORS)
      )

  def test_loss_finite_positive_and_decreases_when_overfitting(self):
    model = _tiny_model()
    losses = retinanet_losses.retinanet_loss(
      model(self.images, training=True), self.labels, NUM_CLASSES
    )
    self.assertEqual(sorted(losses), ['box_loss', 'cls_loss', 'total_loss'])
    for value in losses.values():
      self.assertTrue(np.isfinite(value.numpy()))
      self.assertGreater(float(value), 0.0)
    self.assertAllClose(losses['total_loss'], losses['cls_loss'] + 50.0 * losses['box_loss'])

    optimizer = tf_keras.optimizers.SGD(learning_rate=0.02, momentum=0.9)

    @tf.function
    def step():
      with tf.GradientTape() as tape:
        loss = retinanet_losses.retinanet_loss(
          model(self.images, training=True), self.labels, NUM_CLASSES
        )['total_loss']
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return loss

    history = [float(step()) for _ in range(15)]
    print('overfit losses', history)
    self.assertTrue(all(np.isfinite(history)), history)
    self.assertLess(min(history[-3:]), 0.8 * history[0], history)

  def test_loss_without_positives_is_finite(self):
    model = self.model
    labels = dict(self.labels)
    labels['box_weights'] = tf.zeros_like(labels['box_weights'])
    losses = retinanet_losses.retinanet_loss(model(self.images), labels, NUM_CLASSES)
    self.assertTrue(np.isfinite(losses['total_loss'].numpy()))
    self.assertEqual(float(losses['box_loss']), 0.0)

  def test_detections(self):
    model = self.model
    image_shape = self.labels['image_info'][:, 1, :]
    detections = model.detect(self.images, image_shape=image_shape, pre_nms_score_threshold=0.0)
    self.assertEqual(detections['detection_boxes'].shape, (BATCH, 100, 4))
    self.assertEqual(detections['detection_scores'].shape, (BATCH, 100))
    self.assertEqual(detections['detection_classes'].shape, (BATCH, 100))
    self.assertEqual(detections['num_detections'].shape, (BATCH,))
    boxes = detections['detection_boxes'].numpy()
    self.assertGreater(int(detections['num_detections'][0]), 0)
    self.assertTrue(np.all(boxes >= 0.0))
    self.assertTrue(np.all(boxes <= IMAGE_SIZE))
    self.assertTrue(np.all(boxes[..., 2] >= boxes[..., 0]))
    scores = detections['detection_scores'].numpy()
    self.assertTrue(np.all((scores >= 0.0) & (scores <= 1.0)))
    classes = detections['detection_classes'].numpy()
    valid = np.arange(100)[None] < detections['num_detections'].numpy()[:, None]
    self.assertTrue(np.all((classes[valid] >= 1) & (classes[valid] < NUM_CLASSES)))

    # The parser's anchors equal the model's, and max_num_detections is honoured.
    parser_anchors = {k: v[0] for k, v in self.labels['anchor_boxes'].items()}
    model_anchors = model.anchor_boxes((IMAGE_SIZE, IMAGE_SIZE))
    for level in model_anchors:
      self.assertAllClose(parser_anchors[level], model_anchors[level])
    few = model.detect(
      self.images, anchor_boxes=self.labels['anchor_boxes'], max_num_detections=7, pre_nms_top_k=100
    )
    self.assertEqual(few['detection_boxes'].shape, (BATCH, 7, 4))

  def test_eval_dataset(self):
    dataset = retinanet_input.build_retinanet_dataset(
      self.data['val']['tfrecord_pattern'],
      is_training=False,
      global_batch_size=4,
      image_size=(IMAGE_SIZE, IMAGE_SIZE),
      min_level=MIN_LEVEL,
      max_level=MAX_LEVEL,
    )
    batches = list(dataset)
    self.assertLen(batches, 1)
    images, labels = batches[0]
    self.assertEqual(images.shape, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    self.assertIn('groundtruths', labels)

  def test_workers_with_fewer_files_than_workers_share_the_records(self):
    # 8 training images in 2 files, 3 input pipelines: each pipeline gets its share of
    # the records (3, 3, 2), not one pipeline nothing.
    pattern = self.data['train']['tfrecord_pattern']
    self.assertLen(tf.io.gfile.glob(pattern), 2)
    seen = []
    for pipeline in range(3):
      context = tf.distribute.InputContext(
        num_input_pipelines=3, input_pipeline_id=pipeline, num_replicas_in_sync=3
      )
      dataset = retinanet_input.build_retinanet_dataset(
        pattern,
        is_training=False,
        global_batch_size=3,
        image_size=(IMAGE_SIZE, IMAGE_SIZE),
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        input_context=context,
      )
      ids = [
        i for _, labels in dataset for i in labels['groundtruths']['source_id'].numpy().tolist()
      ]
      self.assertLen(ids, 3 if pipeline < 2 else 2)
      seen += ids
    self.assertLen(set(seen), 8)

  def test_converted_checkpoint_restores_into_backbone(self):
    source = _tiny_model(seed=1)
    source(self.images[:1])
    path = tf.train.Checkpoint(backbone=source.backbone).write(
      os.path.join(self.get_temp_dir(), 'backbone')
    )
    target = _tiny_model(seed=2)
    target(self.images[:1])
    self.assertNotAllClose(
      source.backbone.trainable_variables[0], target.backbone.trainable_variables[0]
    )
    self.assertEqual(sorted(target.checkpoint_items), ['backbone', 'head'])
    # The head is not in a backbone checkpoint, so the restore is partial there...
    status = tf.train.Checkpoint(**target.checkpoint_items).read(path)
    status.expect_partial().assert_nontrivial_match()
    # ...but every backbone variable is bound.
    tf.train.Checkpoint(backbone=target.checkpoint_items['backbone']).read(
      path
    ).assert_existing_objects_matched()
    for a, b in zip(source.backbone.variables, target.backbone.variables):
      self.assertAllEqual(a, b)
    # Full model checkpoints round-trip too.
    full = tf.train.Checkpoint(**source.checkpoint_items).write(
      os.path.join(self.get_temp_dir(), 'full')
    )
    tf.train.Checkpoint(**target.checkpoint_items).read(full).assert_consumed()
    for a, b in zip(source.head.variables, target.head.variables):
      self.assertAllEqual(a, b)

  def test_missing_file_pattern(self):
    pattern = os.path.join(self.get_temp_dir(), 'nothing-*.tfrecord')
    with self.assertRaisesRegex(ValueError, 'nothing-'):
      retinanet_input.build_retinanet_dataset(
        pattern,
        is_training=True,
        global_batch_size=2,
        image_size=(128, 128),
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
      )

  def test_anchor_count_mismatch(self):
    head = retinanet_head.RetinaNetHead(
      num_classes=NUM_CLASSES, num_anchors_per_location=6, num_convs=1, num_filters=32
    )
    with self.assertRaisesRegex(ValueError, 'anchors per location'):
      retinanet_model.RetinaNetModel(backbone=self.model.backbone, head=head)

  def test_model_import_and_call_do_not_import_model_garden(self):
    # Model Garden is only imported for anchors / NMS, the loss and the input
    # pipeline (its package __init__ imports gin and its own SpineNet).
    code = textwrap.dedent("""
        import sys
        import tensorflow as tf
        from official_spinenet.data import retinanet_input
        from official_spinenet.modeling import retinanet_model
        from official_spinenet.modeling.backbones import factory
        from official_spinenet.modeling.heads import retinanet_head
        from official_spinenet.tasks import retinanet_losses
        backbone = factory.build_backbone('spinenet', '49', input_specs=[None, 128, 128, 3],
                                          filter_size_scale=0.25, endpoints_num_filters=16)
        head = retinanet_head.RetinaNetHead(num_classes=5, num_convs=0, num_filters=16)
        model = retinanet_model.RetinaNetModel(backbone, head)
        model(tf.zeros([1, 128, 128, 3]))
        tf.train.Checkpoint(**model.checkpoint_items)
        print(sorted(m for m in sys.modules if m == 'gin' or m.startswith('official.')))
        """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
      [sys.executable, '-c', code],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
    )
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertEqual(result.stdout.strip().splitlines()[-1], '[]')


if __name__ == '__main__':
  tf.test.main()

r"""Training throughput of RetinaNet-SpineNet-49 at 640: ours vs tf-models-official.

  python tools/benchmark_train_throughput.py [--batch_size=2] [--steps=5]

Both models are built from their COCO configurations (ours:
gin_configs/retinanet/spinenet49_640.gin; Model Garden's: `retinanet_spinenet_coco`),
with the same settings (swish, stochastic depth 0.2, anchor size 3, 91 classes,
plain BN since this is one device, float32), and both train on the *same* batch
(one batch of the shapes data at 640 px, parsed by the shared input pipeline) with
SGD momentum 0.9: ours through `Trainer`'s compiled step loop, Model Garden's
through `RetinaNetTask.train_step` in a tf.function. Each side is warmed up, then
timed over --steps steps (median of --repeats runs); the script prints images/s
for both and the ratio ours / Model Garden.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,g-bad-import-order
from official_spinenet import configurables
from official_spinenet.data import retinanet_input
from official_spinenet.data import shapes
from official_spinenet.training import trainer as trainer_lib
# pylint: enable=g-import-not-at-top,g-bad-import-order

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch_size', 2, 'Images per step (one device).')
flags.DEFINE_integer('steps', 5, 'Timed steps per run.')
flags.DEFINE_integer('repeats', 3, 'Timed runs per side (the median is reported).')
IMAGE_SIZE = 640


def _one_batch(batch_size):
  """One (images, labels) batch of 640 px shapes images, as both trainers consume it."""
  tmp = tempfile.mkdtemp()
  data = shapes.make_shapes_dataset(tmp, num_train=batch_size, num_val=1, image_size=IMAGE_SIZE,
                                    seed=0, num_shards=1, show_progress=False)
  dataset = retinanet_input.build_retinanet_dataset(
      data['train']['tfrecord_pattern'], is_training=True, global_batch_size=batch_size,
      image_size=(IMAGE_SIZE, IMAGE_SIZE), min_level=3, max_level=7, anchor_size=3.0,
      aug_rand_hflip=False)
  return next(iter(dataset))


def _time(run_steps, steps, repeats):
  run_steps(2)  # trace + warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_steps(steps)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def ours(batch, steps, repeats):
  configurables.parse_gin(['retinanet/spinenet49_640.gin'], [
      'spinenet.use_sync_bn = False', 'RetinaNetHead.use_sync_bn = False',
      f'TRAIN_BATCH_SIZE = {batch[0].shape[0]}'])
  experiment = configurables.build_experiment()
  task = experiment['task']
  task.build_inputs = lambda is_training, input_context=None: (
      tf.data.Dataset.from_tensors(batch).repeat())
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  trainer = trainer_lib.Trainer(task, strategy, tempfile.mkdtemp(), experiment['config'],
                                experiment['learning_rate'])
  loop = trainer._build_train_loop()  # pylint: disable=protected-access
  iterator = iter(strategy.distribute_datasets_from_function(
      lambda ctx: task.build_inputs(True, ctx)))
  run = lambda n: float(loop(iterator, tf.constant(n))['total_loss'])
  return _time(run, steps, repeats), sum(v.shape.num_elements()
                                         for v in trainer.model.trainable_variables)


def model_garden(batch, steps, repeats):
  # pylint: disable=g-import-not-at-top
  from official.vision.configs import retinanet as retinanet_config
  from official.vision.tasks import retinanet as retinanet_task
  # pylint: enable=g-import-not-at-top
  config = retinanet_config.retinanet_spinenet_coco().task
  config.model.input_size = [IMAGE_SIZE, IMAGE_SIZE, 3]
  config.model.norm_activation.use_sync_bn = False
  task = retinanet_task.RetinaNetTask(config)
  model = task.build_model()
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  images, labels = batch

  @tf.function
  def loop(n):
    loss = tf.constant(0.0)
    for _ in tf.range(n):
      # Model Garden's train_step logs the total loss under task.loss ('loss').
      loss = task.train_step((images, labels), model, optimizer)[task.loss]
    return loss

  run = lambda n: float(loop(tf.constant(n)))
  return _time(run, steps, repeats), sum(v.shape.num_elements()
                                         for v in model.trainable_variables)


def main(argv):
  del argv
  batch = _one_batch(FLAGS.batch_size)
  images = FLAGS.batch_size * FLAGS.steps
  ours_time, ours_params = ours(batch, FLAGS.steps, FLAGS.repeats)
  mg_time, mg_params = model_garden(batch, FLAGS.steps, FLAGS.repeats)
  print(f'RetinaNet-SpineNet-49 at {IMAGE_SIZE}, batch {FLAGS.batch_size}, {os.cpu_count()} '
        f'CPUs, median of {FLAGS.repeats} x {FLAGS.steps} steps')
  print(f'  ours             {images / ours_time:7.2f} images/s   ({ours_params:,} params)')
  print(f'  Model Garden     {images / mg_time:7.2f} images/s   ({mg_params:,} params)')
  print(f'  ratio ours / MG  {mg_time / ours_time:7.3f}')


if __name__ == '__main__':
  app.run(main)

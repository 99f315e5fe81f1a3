"""Training throughput of RetinaNet-SpineNet-49 at 640: ours vs tf-models-official.

Both models are built from their COCO configurations (ours:
gin_configs/retinanet/spinenet49_640.gin; Model Garden's: `retinanet_spinenet_coco`),
with the same settings (swish, stochastic depth 0.2, anchor size 3, 91 classes,
plain BN since this is one device, float32), and both train on the *same* batch
(one batch of the shapes data at 640 px, parsed by the shared input pipeline) with
SGD momentum 0.9: ours through `Trainer`'s compiled step loop, Model Garden's
through its `RetinaNetTask.train_step` in a tf.function. Each side is warmed up
(traced) once, then timed over `steps` steps, the median of `repeats` runs.
Model Garden's task is loaded only when `time_model_garden` runs (it loads their
whole vision package, SpineNet included).
"""

import dataclasses
import tempfile
from typing import Tuple

import tensorflow as tf
import tf_keras

from official_spinenet import configurables
from official_spinenet import model_garden
from official_spinenet.data import retinanet_input
from official_spinenet.data import shapes
from official_spinenet.training import trainer as trainer_lib
from official_spinenet.utils import timing

IMAGE_SIZE = 640
GIN_FILE = 'retinanet/spinenet49_640.gin'

Batch = Tuple[tf.Tensor, dict]


@dataclasses.dataclass
class Throughput:
  """One side of the comparison.

  Attributes:
    seconds: median wall time of `steps` training steps.
    images_per_second: batch size x steps / seconds.
    params: trainable parameters of the model.
  """

  seconds: float
  images_per_second: float
  params: int


def one_batch(batch_size: int) -> Batch:
  """One (images, labels) batch of 640 px shapes images, as both trainers consume it."""
  with tempfile.TemporaryDirectory() as tmp:
    data = shapes.make_shapes_dataset(
      tmp,
      num_train=batch_size,
      num_val=1,
      image_size=IMAGE_SIZE,
      seed=0,
      num_shards=1,
      show_progress=False,
    )
    dataset = retinanet_input.build_retinanet_dataset(
      data['train']['tfrecord_pattern'],
      is_training=True,
      global_batch_size=batch_size,
      image_size=(IMAGE_SIZE, IMAGE_SIZE),
      min_level=3,
      max_level=7,
      anchor_size=3.0,
      aug_rand_hflip=False,
    )
    return next(iter(dataset))


def _params(model: tf_keras.Model) -> int:
  return sum(v.shape.num_elements() for v in model.trainable_variables)


def time_ours(batch: Batch, steps: int, repeats: int) -> Throughput:
  """Our RetinaNet-SpineNet-49 through the trainer's compiled loop, on `batch` repeated."""
  configurables.parse_gin(
    [GIN_FILE],
    [
      'spinenet.use_sync_bn = False',
      'RetinaNetHead.use_sync_bn = False',
      f'TRAIN_BATCH_SIZE = {batch[0].shape[0]}',
    ],
  )
  experiment = configurables.build_experiment()
  task = experiment['task']
  task.build_inputs = lambda is_training, input_context=None: tf.data.Dataset.from_tensors(
    batch
  ).repeat()
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with tempfile.TemporaryDirectory() as model_dir:
    trainer = trainer_lib.Trainer(
      task, strategy, model_dir, experiment['config'], experiment['learning_rate']
    )
    loop = trainer.build_train_loop()
    iterator = iter(
      strategy.distribute_datasets_from_function(lambda ctx: task.build_inputs(True, ctx))
    )
    seconds = timing.median_seconds(
      lambda: loop(iterator, tf.constant(steps))['total_loss'], repeats, warmup=1
    )
  return Throughput(seconds, batch[0].shape[0] * steps / seconds, _params(trainer.model))


def time_model_garden(batch: Batch, steps: int, repeats: int) -> Throughput:
  """tf-models-official's RetinaNet-SpineNet-49 through its task's train_step."""
  config = model_garden.load('retinanet_config').retinanet_spinenet_coco().task
  config.model.input_size = [IMAGE_SIZE, IMAGE_SIZE, 3]
  config.model.norm_activation.use_sync_bn = False
  task = model_garden.load('retinanet_task').RetinaNetTask(config)
  model = task.build_model()
  optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)

  @tf.function
  def loop(n):
    loss = tf.constant(0.0)
    for _ in tf.range(n):
      # Model Garden's train_step logs the total loss under task.loss ('loss').
      loss = task.train_step(batch, model, optimizer)[task.loss]
    return loss

  seconds = timing.median_seconds(lambda: loop(tf.constant(steps)), repeats, warmup=1)
  return Throughput(seconds, batch[0].shape[0] * steps / seconds, _params(model))

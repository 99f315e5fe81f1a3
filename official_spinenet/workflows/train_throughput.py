"""Training throughput of RetinaNet-SpineNet: ours vs tf-models-official, same model.

Three configurations (`CONFIGS`):
  '640': SpineNet-49 at 640 from the COCO configurations (ours:
    gin_configs/retinanet/spinenet49_640.gin; Model Garden's:
    `retinanet_spinenet_coco`): swish, stochastic depth 0.2, anchor size 3, 91
    classes, SGD momentum 0.9.
  'demo': the model `spinenet-demo` trains (gin_configs/demo/
    retinanet_spinenet_found_shapes.gin): the 15 scale-permuted blocks our search
    found, at 128 px, a quarter of SpineNet-49's widths, 64 endpoint filters, ReLU,
    no stochastic depth, a 2-conv head of 64 filters, anchor size 2, 5 classes, Adam.
  'demo_sn49': SpineNet-49's blocks in the same protocol
    (gin_configs/demo/retinanet_spinenet_shapes.gin, which the demo file includes).
    Model Garden's configs offer SpineNet only at its published widths and blocks, so
    for both demo configurations theirs is built from their SpineNet class with the
    same widths and block specs and put in their RetinaNet by their factory (the
    parameter counts match).
Both sides use plain BN (one device) and float32 and train on the *same* batch (one
batch of the shapes data, parsed by the shared input pipeline): ours through
`Trainer`'s compiled step loop (with the config's gradient clipping), Model
Garden's through its `RetinaNetTask.train_step` in a tf.function (which does not
clip). The sides are traced once, then timed in interleaved runs of `steps` steps
(ours, theirs, ours, ...), so that a busy machine slows both alike; medians of
`repeats` runs. Model Garden's task is loaded only when `model_garden_loop` runs
(it loads their whole vision package, SpineNet included).
"""

import dataclasses
import tempfile
from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf
import tf_keras

from official_spinenet import configurables
from official_spinenet import model_garden
from official_spinenet.data import retinanet_input
from official_spinenet.data import shapes
from official_spinenet.training import trainer as trainer_lib
from official_spinenet.utils import op_profile
from official_spinenet.utils import timing


@dataclasses.dataclass(frozen=True)
class Config:
  """One benchmarked model: our gin file and what Model Garden's must be set to."""

  image_size: int
  gin_file: str
  gin_params: Tuple[str, ...]
  anchor_size: float
  num_classes: int
  demo_width: bool  # Model Garden's SpineNet built at the demo's width, not from its config


_DEMO_MACROS = (
  "TRAIN_FILE_PATTERN='unused'",
  "EVAL_FILE_PATTERN='unused'",
  "ANNOTATION_FILE='unused'",
)
CONFIGS: Dict[str, Config] = {
  '640': Config(640, 'retinanet/spinenet49_640.gin', (), 3.0, 91, False),
  'demo': Config(128, 'demo/retinanet_spinenet_found_shapes.gin', _DEMO_MACROS, 2.0, 5, True),
  'demo_sn49': Config(128, 'demo/retinanet_spinenet_shapes.gin', _DEMO_MACROS, 2.0, 5, True),
}

Batch = Tuple[tf.Tensor, dict]
Loop = Callable[[], tf.Tensor]  # runs `steps` training steps, returns the last loss


@dataclasses.dataclass
class Throughput:
  """One side of the comparison.

  Attributes:
    seconds: median wall time of `steps` training steps.
    images_per_second: batch size x steps / seconds.
    params: trainable parameters of the model.
    op_seconds: op time by op kind of one more run (`op_profile.op_seconds`),
      when profiled.
  """

  seconds: float
  images_per_second: float
  params: int
  op_seconds: Optional[Dict[str, float]] = None

  @property
  def convolution_share(self) -> float:
    """The convolutions' share of the profiled op time."""
    return self.op_seconds[op_profile.CONVOLUTION] / sum(self.op_seconds.values())


def ratio_ceiling(ours: Throughput, theirs: Throughput) -> float:
  """Their time over ours if every op of ours but the convolutions took no time.

  Amdahl's bound for a graph-level speed-up that keeps the convolutions (the same
  kernels on the same shapes on both sides): an estimate, as op time is not wall time.
  """
  return theirs.seconds / (ours.seconds * ours.convolution_share)


def one_batch(batch_size: int, config: Config) -> Batch:
  """One (images, labels) batch of shapes images, as both trainers consume it."""
  with tempfile.TemporaryDirectory() as tmp:
    data = shapes.make_shapes_dataset(
      tmp,
      num_train=batch_size,
      num_val=1,
      image_size=config.image_size,
      seed=0,
      num_shards=1,
      show_progress=False,
    )
    dataset = retinanet_input.build_retinanet_dataset(
      data['train']['tfrecord_pattern'],
      is_training=True,
      global_batch_size=batch_size,
      image_size=(config.image_size, config.image_size),
      min_level=3,
      max_level=7,
      anchor_size=config.anchor_size,
      aug_rand_hflip=False,
    )
    return next(iter(dataset))


def _params(model: tf_keras.Model) -> int:
  return sum(v.shape.num_elements() for v in model.trainable_variables)


def our_loop(batch: Batch, steps: int, config: Config) -> Tuple[Loop, int]:
  """Our model through the trainer's compiled loop, on `batch` repeated; (loop, params)."""
  configurables.parse_gin(
    [config.gin_file],
    list(config.gin_params)
    + [
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
  model_dir = tempfile.mkdtemp(prefix='train_throughput_')  # nothing is written to it
  trainer = trainer_lib.Trainer(
    task,
    strategy,
    model_dir,
    experiment['config'],
    experiment['learning_rate'],
    experiment['optimizer'],
  )
  loop = trainer.build_train_loop()
  iterator = iter(
    strategy.distribute_datasets_from_function(lambda ctx: task.build_inputs(True, ctx))
  )
  num_steps = tf.constant(steps)
  return (lambda: loop(iterator, num_steps)['total_loss']), _params(trainer.model)


def _model_garden_model(task, config: Config, task_config) -> tf_keras.Model:
  if not config.demo_width:
    return task.build_model()
  model_config = task_config.model
  input_specs = tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size))
  l2 = tf_keras.regularizers.l2(task_config.losses.l2_weight_decay / 2.0)  # as their task
  try:
    block_specs = configurables.gin_value('spinenet.block_specs')
  except ValueError:  # not bound: SpineNet-49's, their default too
    block_specs = None
  spinenet_module = model_garden.spinenet_for_benchmarks()
  backbone = spinenet_module.SpineNet(
    input_specs=input_specs,
    block_specs=spinenet_module.build_block_specs(block_specs),
    min_level=3,
    max_level=7,
    endpoints_num_filters=configurables.gin_value('spinenet.endpoints_num_filters'),
    filter_size_scale=configurables.gin_value('spinenet.filter_size_scale'),
    init_stochastic_depth_rate=0.0,
    kernel_regularizer=l2,
    activation=model_config.norm_activation.activation,
    use_sync_bn=False,
  )
  return model_garden.load('retinanet_factory').build_retinanet(
    input_specs, model_config, l2, backbone=backbone
  )


def model_garden_loop(batch: Batch, steps: int, config: Config) -> Tuple[Loop, int]:
  """tf-models-official's model through its task's train_step; (loop, params).

  Call after `our_loop` for the same config: the demo's widths, head and optimizer
  are read from the gin bindings it parsed.
  """
  task_config = model_garden.load('retinanet_config').retinanet_spinenet_coco().task
  model_config = task_config.model
  model_config.input_size = [config.image_size, config.image_size, 3]
  model_config.num_classes = config.num_classes
  model_config.anchor.anchor_size = config.anchor_size
  model_config.norm_activation.use_sync_bn = False
  if config.demo_width:
    model_config.norm_activation.activation = configurables.gin_value('spinenet.activation')
    model_config.backbone.spinenet.stochastic_depth_drop_rate = 0.0
    model_config.head.num_convs = configurables.gin_value('RetinaNetHead.num_convs')
    model_config.head.num_filters = configurables.gin_value('RetinaNetHead.num_filters')
    optimizer = tf_keras.optimizers.Adam(0.001)
  else:
    optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
  task = model_garden.load('retinanet_task').RetinaNetTask(task_config)
  model = _model_garden_model(task, config, task_config)
  model(batch[0][:1], training=False)  # builds the head, whose parameters are counted

  @tf.function
  def loop(n):
    loss = tf.constant(0.0)
    for _ in tf.range(n):
      # Model Garden's train_step logs the total loss under task.loss ('loss').
      loss = task.train_step(batch, model, optimizer)[task.loss]
    return loss

  num_steps = tf.constant(steps)
  return (lambda: loop(num_steps)), _params(model)


def op_time_rows(ours: Throughput, theirs: Throughput, top: int = 8) -> list:
  """(op kind, ours s, theirs s, ours share) for the `top` kinds of our op time, then
  the rest and the totals; both sides profiled."""
  total_ours, total_theirs = sum(ours.op_seconds.values()), sum(theirs.op_seconds.values())
  kinds = sorted(ours.op_seconds, key=ours.op_seconds.get, reverse=True)[:top]
  rows = [
    (k, ours.op_seconds[k], theirs.op_seconds.get(k, 0.0), ours.op_seconds[k] / total_ours)
    for k in kinds
  ]
  rest_ours = total_ours - sum(r[1] for r in rows)
  rest_theirs = total_theirs - sum(r[2] for r in rows)
  rows.append(('(other kinds)', rest_ours, rest_theirs, rest_ours / total_ours))
  rows.append(('total op time', total_ours, total_theirs, 1.0))
  return rows


def compare(
  batch: Batch, steps: int, repeats: int, config: Config, profile: bool = False
) -> Dict[str, Throughput]:
  """Both sides timed in interleaved runs: {'ours': ..., 'model_garden': ...}.

  profile: then one more run of each side under the profiler (`Throughput.op_seconds`).
  """
  loops = {'ours': our_loop(batch, steps, config)}
  loops['model_garden'] = model_garden_loop(batch, steps, config)
  seconds, _ = timing.interleaved_medians(
    {name: loop for name, (loop, _) in loops.items()}, dict.fromkeys(loops, repeats)
  )
  batch_size = batch[0].shape[0]
  return {
    name: Throughput(
      seconds[name],
      batch_size * steps / seconds[name],
      params,
      op_profile.op_seconds(loop) if profile else None,
    )
    for name, (loop, params) in loops.items()
  }

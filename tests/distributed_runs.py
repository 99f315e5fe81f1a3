"""Runs a tiny model under a strategy in a fresh process (for test_distribute.py).

  python tests/distributed_runs.py mirrored_vs_one_device DATA_DIR OUTPUT_DIR
  python tests/distributed_runs.py maskrcnn_mirrored_vs_one_device DATA_DIR OUTPUT_DIR

Logical CPU devices must be configured before TensorFlow initialises, which a
pytest process that already ran other tests cannot do; hence a subprocess.

Both runs (and tests/test_multi_worker.py's workers) use the tiny configs
with a minimal SpineNet and pyramid (MINIMAL_MODEL): one intermediate block,
output blocks P3-P5, residual and bottleneck blocks, resampling up and down
(minimal_spinenet_blocks.json).
Building and tracing the mirrored step, which is most of the run, scales with
the number of blocks, resampling connections and pyramid levels, not with their
width, and the comparison is about the strategies, not the topology. Every BN
layer, backbone's and heads', is synchronised as before. Mask R-CNN, measured
on both topologies (one step): the backbone's weights within 5.2e-4 of their
update on the minimal one (4.9e-4 on the full one), every weight within 0.15 of
test_distribute.py's tolerance on either, the losses within 1e-5 (tolerance 1e-3).

The models train through sync BN, their backbone in float64 (RetinaNet: the
whole model; Mask R-CNN's RoI ops are float32 only). In training mode the tiny
SpineNet is ill-conditioned: with the tiny configs' P3-P7 at batch 4 and 128 px
its BN layers normalise 16 values per channel at P6 and 4 at P7, and a BN layer
amplifies relative changes of its inputs by |mean| / stddev of its channels.
Measured in float64: a 1e-7 relative change of the images moves its features by
1e-3 of their range and its gradients by 2% of the largest. float32 rounding in
another order (two replicas' halves of the batch) is such a change: in float32,
one device's gradients are 5-10% (of the largest) away from float64's, and the
mirrored run's as far, with tf_keras's BN or ours. In float64 the rounding stays
far below what the comparison resolves.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

from tests.minimal_model import MINIMAL_MODEL

TINY = 'testing/retinanet_tiny.gin'
TINY_MASKRCNN = 'testing/maskrcnn_tiny.gin'
STEPS = 2


def _exact_params(data_dir):
  """The tiny config without randomness (no augmentation), with sync BN and clipping."""
  return [
    f"TRAIN_FILE_PATTERN = '{data_dir}/tfrecords/train-*'",
    'train/InputConfig.aug_rand_hflip = False',
    'train/InputConfig.aug_scale_min = 1.0',
    'train/InputConfig.aug_scale_max = 1.0',
    *MINIMAL_MODEL,
    'spinenet.use_sync_bn = True',
    'RetinaNetHead.use_sync_bn = True',
    f'TRAIN_STEPS = {STEPS}',
    'TrainerConfig.steps_per_loop = 1',
    'TrainerConfig.gradient_clip_norm = 0.5',
  ]


def _maskrcnn_exact_params(data_dir):
  """The tiny Mask R-CNN without randomness: no augmentation, and every selection
  (RPN anchors in the parser, proposals, RoIs, masks) keeps all of its candidates,
  so the selected sets do not depend on how the batch is split over replicas; every
  BN layer synchronised, the heads' too.

  Proposals: at initialisation the RPN's objectness logits are ~1e-4, so the 1008
  sigmoid scores of an image lie within a few float32 ulps of 0.5, most of them
  tied with a neighbour. A top-k of them would be decided by the last bit of
  each run's rounding (measured: the stem's update 3% apart, on one CI machine), so
  every anchor is a proposal, without NMS.
  """
  return [
    f"TRAIN_FILE_PATTERN = '{data_dir}/tfrecords/train-*'",
    'train/InputConfig.aug_rand_hflip = False',
    'train/InputConfig.aug_scale_min = 1.0',
    'train/InputConfig.aug_scale_max = 1.0',
    'MaskRCNNTask.rpn_batch_size_per_im = 4096',  # > a 128 px image's anchors (1008 at P3-P5)
    'MultilevelROIGenerator.pre_nms_top_k = 1008',
    'MultilevelROIGenerator.nms_iou_threshold = 0.0',  # 0: no NMS
    'MultilevelROIGenerator.num_proposals = 1008',
    'ROISampler.num_sampled_rois = 1108',  # all of 1008 proposals + 100 padded ground-truth boxes
    'ROISampler.foreground_fraction = 1.0',
    'MaskRCNNTask.num_sampled_masks = 1108',
    *MINIMAL_MODEL,
    'spinenet.use_sync_bn = True',
    'RPNHead.use_sync_bn = True',
    'DetectionHead.use_sync_bn = True',
    'MaskHead.use_sync_bn = True',
    f'TRAIN_STEPS = {STEPS}',
    'TrainerConfig.steps_per_loop = 1',
    'TrainerConfig.gradient_clip_norm = 0.5',
  ]


def configure_two_cpus():
  """Splits the CPU into two logical devices (before TensorFlow initialises)."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
  )


def _sync_bn_outputs(strategy, forward, images):
  """forward(images) in training mode, replicas concatenated."""
  # experimental_distribute_dataset splits each global batch over the replicas.
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(images.shape[0])
  inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))
  outputs = strategy.run(forward, args=(inputs,))
  return np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(outputs)])


def _model_in_float64(task, tf_keras):
  """Builds the whole model in float64 (the losses stay float32: the task casts)."""
  del task
  tf_keras.mixed_precision.set_global_policy('float64')


def _backbone_in_float64(task, tf_keras):
  """Builds the backbone in float64, the rest in float32 (Model Garden's RoI ops
  are float32 only); Keras casts the float64 features to a head's dtype."""
  build_pyramid = task.build_pyramid

  def build_pyramid_in_float64(*args, **kwargs):
    policy = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy('float64')
    try:
      return build_pyramid(*args, **kwargs)
    finally:
      tf_keras.mixed_precision.set_global_policy(policy)

  task.build_pyramid = build_pyramid_in_float64


def mirrored_vs_one_device(data_dir, output):
  """RetinaNet in float64: the same initial weights trained on one device and on two CPUs."""
  _compare_strategies(
    TINY,
    _exact_params(data_dir),
    output,
    lambda model: lambda x: model(x, training=True)['cls_outputs']['3'],
    _model_in_float64,
    steps=STEPS,
  )


def maskrcnn_mirrored_vs_one_device(data_dir, output):
  """Mask R-CNN: the same, through the RPN, RoI sampling and the mask head.

  One step: the float32 heads' rounding enters the weights it updates, and a
  second step's forward pass through the backbone would amplify it.
  """
  _compare_strategies(
    TINY_MASKRCNN,
    _maskrcnn_exact_params(data_dir),
    output,
    # RPN objectness on P3, as RetinaNet's check compares its class logits on P3.
    lambda model: lambda x: model.rpn_head(model.backbone(x, training=True), training=True)[0]['3'],
    _backbone_in_float64,
    steps=1,
  )


def _compare_strategies(gin_file, params, output, training_forward, in_float64, steps):
  """Trains the same initial weights on one device and on two mirrored CPUs, through sync BN.

  training_forward(model) -> fn(images): a training-mode forward pass through
  sync BN, compared on the same images. in_float64(task, tf_keras) makes the
  task build its model (or its backbone) in float64, see the module docstring.
  """
  configure_two_cpus()
  # pylint: disable=g-import-not-at-top
  import tf_keras

  from official_spinenet import configurables
  from official_spinenet.training import trainer as trainer_lib

  # pylint: enable=g-import-not-at-top
  results, initial, images = {}, None, None
  strategies = {
    'one_device': tf.distribute.OneDeviceStrategy('/cpu:0'),
    'mirrored': tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']),
  }
  for name, strategy in strategies.items():
    configurables.parse_gin([gin_file], params)
    experiment = configurables.build_experiment()
    task = experiment['task']
    in_float64(task, tf_keras)
    trainer = trainer_lib.Trainer(
      task, strategy, os.path.join(output, name), experiment['config'], experiment['learning_rate']
    )
    if initial is None:
      initial = [w.numpy() for w in trainer.model.weights]
      images = next(iter(task.build_inputs(True)))[0].numpy()
    else:
      trainer.model.set_weights(initial)
    # Sync BN: one forward pass in training mode (global-batch statistics).
    sync_bn_logits = _sync_bn_outputs(strategy, training_forward(trainer.model), images)
    # That pass moved the BN statistics by each run's own arithmetic; train from
    # the same starting point, through sync BN.
    trainer.model.set_weights(initial)
    losses = [trainer.train(until_step=step)['total_loss'] for step in range(1, steps + 1)]
    results[name] = {
      'replicas': strategy.num_replicas_in_sync,
      'sync_bn_logits': sync_bn_logits.tolist(),
      'losses': losses,
      # Every weight: the trained ones and BN's moving statistics.
      'names': [w.name for w in trainer.model.weights],
      'dtypes': [w.dtype.name for w in trainer.model.weights],
      'weights': [w.numpy().tolist() for w in trainer.model.weights],
      'initial': [w0.tolist() for w0 in initial],
    }
  with open(os.path.join(output, 'results.json'), 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  {
    'mirrored_vs_one_device': mirrored_vs_one_device,
    'maskrcnn_mirrored_vs_one_device': maskrcnn_mirrored_vs_one_device,
  }[sys.argv[1]](*sys.argv[2:])

"""Serving latency of RetinaNet-SpineNet-49 at 640: our SavedModel against Model Garden's.

The same model on both sides, with the same weights: Model Garden's
`retinanet_spinenet_coco` experiment builds its model, which gets random weights that
keep activations O(1) (`randomize_weights`), and is written twice: as Model Garden's
checkpoint (`model`) and in our layout (`backbone`, `head`; SpineNet-49's checkpoint
layout is Model Garden's). Ours is exported from gin_configs/retinanet/spinenet49_640.gin
by `workflows.export.export_from_checkpoint`, theirs by their
`export_saved_model_lib.export_inference_graph(input_type='image_bytes', ...)`, each
with a static batch size and its own default post-processing (ours: the task's NMS
settings, 'fast'; theirs: its DetectionGenerator, NMS v2).

Each SavedModel is served in its own subprocess (workflows/benchmark_child.py: its
peak memory is its own) on the same batch of 640x480 JPEGs; both are warmed up, then
their calls alternate (who goes first alternates too), so a load that comes and goes
on a shared machine falls on both sides alike.
"""

import dataclasses
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from official_spinenet import model_garden
from official_spinenet.workflows import benchmark_child
from official_spinenet.workflows import export as export_workflow

IMAGE_SIZE = 640
GIN_FILE = 'retinanet/spinenet49_640.gin'
GIN_PARAMS = ('spinenet.use_sync_bn = False', 'RetinaNetHead.use_sync_bn = False')
JPEG_HEIGHT, JPEG_WIDTH = 480, 640
SIDES = ('ours', 'model_garden')
# signature and its input name in each side's SavedModel.
SIGNATURES = {
  'ours': ('serving_default', 'image_bytes'),
  'model_garden': ('serving_default', 'inputs'),
}
# The classifier's bias prior (RetinaNet's pi = 0.01): random class logits then put a
# few percent of anchors over the score threshold, as a trained model's do.
_CLASS_PRIOR_BIAS = -float(np.log((1 - 0.01) / 0.01))


@dataclasses.dataclass
class LatencyStats:
  """Latency of one side at one batch size.

  Attributes:
    median_seconds: median wall time of a call (a batch of images).
    p95_seconds: 95th percentile of the call times (linear interpolation).
    images_per_second: batch size / median_seconds.
    calls: how many calls were timed.
  """

  median_seconds: float
  p95_seconds: float
  images_per_second: float
  calls: int


def latency_stats(seconds: Sequence[float], batch_size: int) -> LatencyStats:
  """LatencyStats of the call times `seconds` (each a batch of batch_size images)."""
  if not seconds:
    raise ValueError('No call times given.')
  median = float(np.median(seconds))
  return LatencyStats(median, float(np.percentile(seconds, 95)), batch_size / median, len(seconds))


@dataclasses.dataclass(frozen=True)
class ModelSize:
  """Which SpineNet at which input size, with how many classes, both sides build.

  Tests use small ones: fewer classes, because Model Garden's class-aware NMS is a
  Python loop over the classes, and its graph (export, load, first call) grows with them.
  """

  image_size: int = IMAGE_SIZE
  model_id: str = '49'
  num_classes: int = 91  # COCO's, as in GIN_FILE and retinanet_spinenet_coco

  def gin_params(self) -> List[str]:
    """Our bindings on top of GIN_FILE: plain BN (one device), this size, model and classes."""
    return list(GIN_PARAMS) + [
      f'IMAGE_SIZE = {self.image_size}',
      f"spinenet.model_id = '{self.model_id}'",
      f'NUM_CLASSES = {self.num_classes}',
    ]


def model_garden_experiment(size: ModelSize = ModelSize()):
  """Model Garden's `retinanet_spinenet_coco` ExperimentConfig, plain BN (one device)."""
  config = model_garden.load('retinanet_config').retinanet_spinenet_coco()
  config.task.model.input_size = [size.image_size, size.image_size, 3]
  config.task.model.backbone.spinenet.model_id = size.model_id
  config.task.model.num_classes = size.num_classes
  config.task.model.norm_activation.use_sync_bn = False
  return config


def randomize_weights(model: tf_keras.Model, seed: int = 0) -> None:
  """Kernels He-normal, other weights (BN statistics, scales, biases) in [0.5, 1.5].

  BN statistics near 1 keep activations O(1) through the whole network; the class
  logits' bias is then set to RetinaNet's prior so that detections are a minority.
  """
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    shape = variable.shape.as_list()
    if len(shape) > 1:
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif 'scores' in variable.name and 'bias' in variable.name:
      value = np.full(shape, _CLASS_PRIOR_BIAS)
    else:
      value = rng.uniform(0.5, 1.5, size=shape)
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))


def write_checkpoints(
  directory: str, size: ModelSize = ModelSize(), seed: int = 0
) -> Dict[str, str]:
  """Model Garden's model with random weights -> {'ours': prefix, 'model_garden': prefix}."""
  config = model_garden_experiment(size).task
  model = model_garden.load('retinanet_task').RetinaNetTask(config).build_model()
  # Creates the head's variables (training mode returns raw outputs, no detection step).
  model(tf.zeros([1, size.image_size, size.image_size, 3]), training=True)
  randomize_weights(model, seed)
  return {
    'model_garden': tf.train.Checkpoint(model=model).write(os.path.join(directory, 'mg', 'ckpt')),
    'ours': tf.train.Checkpoint(backbone=model.backbone, head=model.head).write(
      os.path.join(directory, 'ours', 'ckpt')
    ),
  }


def export_ours(
  checkpoint: str, export_dir: str, batch_size: int, size: ModelSize = ModelSize()
) -> str:
  """Our SavedModel of GIN_FILE (at `size`) with the checkpoint's weights."""
  return export_workflow.export_from_checkpoint(
    [GIN_FILE], size.gin_params(), checkpoint, export_dir, batch_size=batch_size, overwrite=True
  )


def export_model_garden(
  checkpoint: str, export_dir: str, batch_size: int, size: ModelSize = ModelSize()
) -> str:
  """Model Garden's own image_bytes SavedModel of retinanet_spinenet_coco (at `size`)."""
  model_garden.load('export_saved_model_lib').export_inference_graph(
    input_type='image_bytes',
    batch_size=batch_size,
    input_image_size=[size.image_size, size.image_size],
    params=model_garden_experiment(size),
    checkpoint_path=checkpoint,
    export_dir=export_dir,
  )
  return export_dir


def write_jpegs(directory: str, count: int, seed: int = 0) -> List[str]:
  """`count` 640x480 JPEGs of smooth random content (upsampled noise) -> their paths."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    noise = rng.uniform(0, 255, size=(JPEG_HEIGHT // 16, JPEG_WIDTH // 16, 3))
    image = tf.image.resize(noise[None], [JPEG_HEIGHT, JPEG_WIDTH], method='bicubic')[0]
    paths.append(os.path.join(directory, f'image_{i}.jpg'))
    pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    tf.io.write_file(paths[-1], tf.io.encode_jpeg(pixels))
  return paths


def start_server(side: str, export_dir: str, image_files: Sequence[str], warmup: int):
  """A benchmark child serving `side`'s SavedModel on the images; waits until it is warm."""
  signature, input_name = SIGNATURES[side]
  child = benchmark_child.Child(
    'serve', export_dir=export_dir, signature=signature, input_name=input_name,
    image_files=list(image_files), warmup=warmup,
  )  # fmt: skip
  child.read_reply()
  return child


def interleaved_seconds(children: Dict[str, Any], calls: int) -> Dict[str, List[float]]:
  """`calls` timed calls of each child, alternating sides and who goes first."""
  names = list(children)
  seconds = {name: [] for name in names}
  for i in range(calls):
    for name in names if i % 2 == 0 else names[::-1]:
      seconds[name].append(children[name].request('call')['seconds'])
  return seconds


def compare_detections(ours: Dict[str, Any], theirs: Dict[str, Any]) -> Dict[str, Any]:
  """Shapes of both sides' detection outputs and how far their scores are apart.

  Returns:
    {'shapes': {key: (our shape, their shape)} for the detection keys,
     'num_detections': (ours, theirs) per image,
     'max_score_difference': max |score difference| over each image's detections,
       sorted by score, up to the smaller count (NaN when neither has any)}.
  """
  keys = ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')
  shapes = {k: (np.shape(ours[k]), np.shape(theirs[k])) for k in keys}
  counts = [np.asarray(side['num_detections']).astype(int).tolist() for side in (ours, theirs)]
  differences = []
  for i, (n_ours, n_theirs) in enumerate(zip(*counts)):
    n = min(n_ours, n_theirs)
    a = np.sort(np.asarray(ours['detection_scores'][i])[:n])
    b = np.sort(np.asarray(theirs['detection_scores'][i])[:n])
    differences.extend(np.abs(a - b).tolist())
  return {
    'shapes': shapes,
    'num_detections': tuple(counts),
    'max_score_difference': max(differences) if differences else float('nan'),
  }


@dataclasses.dataclass
class ServingResult:
  """Both sides at one batch size.

  Attributes:
    batch_size: images per call.
    stats: side -> LatencyStats.
    peak_rss_mb: side -> peak resident memory (MiB) of its serving process.
    detections: compare_detections of the last call's outputs (ours, theirs).
  """

  batch_size: int
  stats: Dict[str, LatencyStats]
  peak_rss_mb: Dict[str, float]
  detections: Dict[str, Any]


def export_both(
  work_dir: str, batch_size: int, size: ModelSize = ModelSize(), seed: int = 0
) -> Dict[str, str]:
  """Both sides' SavedModels of the same random weights -> {side: export dir}.

  Exports already in work_dir (of an earlier run at the same size and seed) are reused.
  """
  export_dirs = {side: os.path.join(work_dir, f'{side}_b{batch_size}') for side in SIDES}
  missing = [s for s in SIDES if not os.path.exists(os.path.join(export_dirs[s], 'saved_model.pb'))]
  if missing:
    checkpoints = write_checkpoints(os.path.join(work_dir, 'checkpoints'), size, seed)
    exporters = {'ours': export_ours, 'model_garden': export_model_garden}
    for side in missing:
      exporters[side](checkpoints[side], export_dirs[side], batch_size, size)
  return export_dirs


def serve_both(
  export_dirs: Dict[str, str], image_files: Sequence[str], calls: int, warmup: int = 2
) -> ServingResult:
  """Times both SavedModels interleaved, each in its own process, on the same images."""
  children = {side: start_server(side, export_dirs[side], image_files, warmup) for side in SIDES}
  try:
    seconds = interleaved_seconds(children, calls)
    outputs = {side: child.request('outputs') for side, child in children.items()}
  finally:
    peaks = {side: child.finish()['peak_rss_mb'] for side, child in children.items()}
  batch_size = len(image_files)
  return ServingResult(
    batch_size,
    {side: latency_stats(seconds[side], batch_size) for side in SIDES},
    peaks,
    compare_detections(outputs['ours'], outputs['model_garden']),
  )

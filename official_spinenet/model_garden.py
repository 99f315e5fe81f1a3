"""The one place the package imports tf-models-official (`official.*`), lazily.

Importing any `official.vision` module runs its package initialiser, which loads
gin, its model registry and every task (seconds, and hundreds of MB). The package
reuses only generic pieces (anchors, box ops, losses, parsers, the detection
generator, ResNet, LR schedules); they are loaded here on first use, so importing
our layers, backbones and binaries stays fast. The package never loads Model
Garden's SpineNet, SpineNet-Mobile or NAS-FPN (the tests import them as the
reference); `load` refuses them.

  anchor = model_garden.load('anchor')        # official.vision.ops.anchor
"""

import sys
from types import ModuleType

# Short name -> module. Everything the package takes from tf-models-official.
MODULES = {
  'anchor': 'official.vision.ops.anchor',
  'box_ops': 'official.vision.ops.box_ops',
  'mask_ops': 'official.vision.ops.mask_ops',
  'preprocess_ops': 'official.vision.ops.preprocess_ops',
  'focal_loss': 'official.vision.losses.focal_loss',
  'loss_utils': 'official.vision.losses.loss_utils',
  'retinanet_input': 'official.vision.dataloaders.retinanet_input',
  'classification_input': 'official.vision.dataloaders.classification_input',
  'tf_example_decoder': 'official.vision.dataloaders.tf_example_decoder',
  'detection_generator': 'official.vision.modeling.layers.detection_generator',
  'resnet': 'official.vision.modeling.backbones.resnet',
  # Mask R-CNN's generic pieces (modeling/maskrcnn_model.py, data/maskrcnn_input.py).
  'maskrcnn_model': 'official.vision.modeling.maskrcnn_model',
  'dense_prediction_heads': 'official.vision.modeling.heads.dense_prediction_heads',
  'instance_heads': 'official.vision.modeling.heads.instance_heads',
  'roi_generator': 'official.vision.modeling.layers.roi_generator',
  'roi_sampler': 'official.vision.modeling.layers.roi_sampler',
  'roi_aligner': 'official.vision.modeling.layers.roi_aligner',
  'mask_sampler': 'official.vision.modeling.layers.mask_sampler',
  'maskrcnn_losses': 'official.vision.losses.maskrcnn_losses',
  'maskrcnn_input': 'official.vision.dataloaders.maskrcnn_input',
  'lr_schedule': 'official.modeling.optimization.lr_schedule',
  # Model Garden's own RetinaNet experiment, only to compare training speed against
  # (workflows/train_throughput.py): loading it loads their SpineNet, at that call.
  'retinanet_config': 'official.vision.configs.retinanet',
  'retinanet_task': 'official.vision.tasks.retinanet',
  'retinanet_factory': 'official.vision.modeling.factory',
  # Model Garden's own SavedModel export, only to compare serving latency and memory
  # against (workflows/serving_benchmark.py).
  'export_saved_model_lib': 'official.vision.serving.export_saved_model_lib',
}
_REFERENCE_ONLY = (
  'official.vision.modeling.backbones.spinenet',
  'official.vision.modeling.backbones.spinenet_mobile',
  'official.vision.modeling.decoders.nasfpn',
)


def load(name: str) -> ModuleType:
  """The tf-models-official module registered as `name` in MODULES, imported now."""
  if name not in MODULES:
    raise KeyError(
      f'No tf-models-official module {name!r} registered; add it to '
      f'model_garden.MODULES (known: {sorted(MODULES)}).'
    )
  path = MODULES[name]
  if path.startswith(_REFERENCE_ONLY):
    raise ValueError(f'{path} is the reference implementation; the package never uses it.')
  # The builtin __import__, not importlib.import_module: `load` runs inside
  # tf.functions, where AutoGraph would try to convert importlib's frozen internals
  # and warn on every trace.
  __import__(path)
  return sys.modules[path]


def spinenet_for_benchmarks() -> ModuleType:
  """Model Garden's SpineNet module, only for benchmarks that time their model against ours.

  Their configs offer SpineNet only at the published widths and blocks; a benchmark
  of our demo's models builds theirs with the same widths and block specs from its
  `SpineNet` class and `build_block_specs`.
  """
  __import__('official.vision.modeling.backbones.spinenet')
  return sys.modules['official.vision.modeling.backbones.spinenet']
